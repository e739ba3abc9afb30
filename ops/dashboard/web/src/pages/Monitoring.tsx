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
  type Key = "consumer_lag" | "dlq_records" | "errors" | "quality_score" | "freshness_p50_s"
    | "freshness_p99_s" | "restarts";
  const figure = (id: string, i: number, k: Key) =>
    samples[i].m.pipelines.find((p) => p.id === id)?.stats[k] ?? null;
  // end-to-end freshness: p50 and p99 per pipeline (the loaders' histogram)
  const percentiles = ids.flatMap((id) => (["p50", "p99"] as const).map((q) => ({
    label: `${names.get(id)} ${q}`,
    data: samples.slice(1).map((_, i) => figure(id, i + 1, q === "p50" ? "freshness_p50_s" : "freshness_p99_s")) })));
  // quality failures: one line per pipeline and rule
  const rules = new Map<string, [string, string]>();
  samples.forEach((s) => s.m.pipelines.forEach((p) => Object.keys(p.stats.quality_failures ?? {})
    .forEach((r) => rules.set(`${p.id}/${r}`, [p.id, r]))));
  const byRule = [...rules.values()].map(([id, rule]) => ({
    label: `${names.get(id)}: ${rule}`,
    data: samples.slice(1).map((s) => s.m.pipelines.find((p) => p.id === id)?.stats.quality_failures?.[rule] ?? null) }));
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
        <LineChart testid="chart-freshness-pct" title="End-to-end freshness p50 / p99 (s, rows written)"
                   labels={labels} series={percentiles} />
        <LineChart testid="chart-rules" title="Quality failures by rule (rows)" labels={labels}
                   series={byRule} />
        <LineChart testid="chart-dlq" title="Dead letters" labels={labels}
                   series={per((id, i) => figure(id, i, "dlq_records"))} />
        <LineChart testid="chart-restarts" title="Process restarts" labels={labels}
                   series={per((id, i) => figure(id, i, "restarts"))} />
        <LineChart testid="chart-quality" title="Quality score" labels={labels}
                   series={per((id, i) => figure(id, i, "quality_score"))} />
        <LineChart testid="chart-errors" title="Errors (not a record's fault)" labels={labels}
                   series={per((id, i) => figure(id, i, "errors"))} />
      </div>
    </section>
  );
}
