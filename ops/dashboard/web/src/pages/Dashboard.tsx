import { api, currentSession, isAdmin, listPipelines } from "../api";
import { rates } from "../live";
import { LineChart } from "../chart";
import { Badge, Card, Problem, fmt, pct, timeLabel, useAsync, useLive } from "../ui";

export function Dashboard() {
  const samples = useLive();
  const [pipes, error] = useAsync(listPipelines, []);
  const admin = isAdmin(currentSession());  // integrations are an admin's to see
  const [integrations] = useAsync(() => admin ? api<{ items: unknown[] }>("GET", "/api/v1/integrations")
    : Promise.resolve(undefined), [admin]);
  const last = samples[samples.length - 1]?.m.pipelines ?? [];
  const r = rates(samples);
  const now = r[r.length - 1];
  const scores = last.map((p) => p.stats.quality_score).filter((q): q is number => q !== null);
  const dlq = last.reduce((t, p) => t + (p.stats.dlq_records ?? 0), 0);
  const recent = [...(pipes ?? [])].sort((a, b) => b.updated_at.localeCompare(a.updated_at)).slice(0, 5);
  return (
    <section>
      <h1>Dashboard</h1>
      <Problem error={error} />
      <div className="cards">
        <Card testid="card-running" label="Pipelines running"
              value={fmt(last.filter((p) => p.state === "running").length)} />
        <Card testid="card-failed" label="Pipelines failed"
              value={fmt(last.filter((p) => p.state === "failed").length)} />
        <Card testid="card-in" label="Events/s in" value={fmt(now?.in, 1)} />
        <Card testid="card-out" label="Events/s out" value={fmt(now?.out, 1)} />
        <Card testid="card-quality" label="Quality score"
              value={scores.length ? pct(scores.reduce((a, b) => a + b, 0) / scores.length) : "–"} />
        <Card testid="card-dlq" label="DLQ size" value={fmt(dlq)} />
      </div>
      <LineChart testid="throughput" title="Throughput (events/s)" labels={r.map((x) => timeLabel(x.at))}
                 series={[{ label: "in", data: r.map((x) => x.in) },
                          { label: "out", data: r.map((x) => x.out) }]} />
      <div className="two">
        <div>
          <h2>Recent pipelines</h2>
          <ul className="plain">
            {recent.map((p) => <li key={p.id}><a href={`#/pipelines/${p.id}`}>{p.name}</a>{" "}
              <Badge state={p.state} /></li>)}
            {pipes && !pipes.length && <li>No pipeline yet.</li>}
          </ul>
        </div>
        <div>
          <h2>Integrations</h2>
          <p>{integrations ? `${integrations.items.length} webhook${integrations.items.length === 1 ? "" : "s"} configured`
            : admin ? "–" : "shown to admins"}</p>
        </div>
      </div>
    </section>
  );
}
