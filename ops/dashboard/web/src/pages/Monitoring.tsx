import { rates } from "../live";
import { LineChart } from "../chart";
import { timeLabel, useLive } from "../ui";

export function MonitoringPage() {
  const samples = useLive(180);
  const names = new Map<string, string>();
  samples.forEach((s) => s.m.pipelines.forEach((p) => names.set(p.id, p.name)));
  const ids = [...names.keys()];
  const labels = samples.slice(1).map((s) => timeLabel(s.at));
  const per = (f: (id: string, i: number) => number | null) =>
    ids.map((id) => ({ label: names.get(id)!, data: samples.slice(1).map((_, i) => f(id, i + 1)) }));
  const figure = (id: string, i: number, k: "consumer_lag" | "dlq_records" | "errors" | "quality_score") =>
    samples[i].m.pipelines.find((p) => p.id === id)?.stats[k] ?? null;
  const rateOf = new Map(ids.map((id) => [id, rates(samples, id)]));
  const freshness = (id: string, i: number) => {
    const t = samples[i].m.pipelines.find((p) => p.id === id)?.stats.last_event_time;
    return t ? Math.max(0, (samples[i].at - Date.parse(t)) / 1000) : null;
  };
  return (
    <section>
      <h1>Monitoring</h1>
      <p className="muted">Live from the API's event stream (one sample a second, the last three minutes).</p>
      <div className="charts">
        <LineChart testid="chart-throughput" title="Throughput in (events/s)" labels={labels}
                   series={per((id, i) => rateOf.get(id)![i - 1]?.in ?? null)} />
        <LineChart testid="chart-lag" title="Consumer lag (records)" labels={labels}
                   series={per((id, i) => figure(id, i, "consumer_lag"))} />
        <LineChart testid="chart-freshness" title="Seconds since a worker last read a record" labels={labels}
                   series={per(freshness)} />
        <LineChart testid="chart-dlq" title="Quality failures (dead letters)" labels={labels}
                   series={per((id, i) => figure(id, i, "dlq_records"))} />
        <LineChart testid="chart-quality" title="Quality score" labels={labels}
                   series={per((id, i) => figure(id, i, "quality_score"))} />
        <LineChart testid="chart-errors" title="Errors (not a record's fault)" labels={labels}
                   series={per((id, i) => figure(id, i, "errors"))} />
      </div>
    </section>
  );
}
