import { stringify } from "yaml";
import { api, type Pipeline, type Run, type Session, type StageFigures, type StatusView } from "../api";
import { Actions } from "../actions";
import { Badge, Problem, fmt, pct, useAsync, useLive } from "../ui";

type Spec = Record<string, unknown>;
const kinds = (xs: unknown): string[] => (Array.isArray(xs) ? xs : []).map((x) =>
  String((x as Spec).type ?? (x as Spec).name ?? "?"));

/** The group a step's name belongs to in the topology. */
function groupOf(stage: string): string {
  if (stage.startsWith("transform:")) return "transforms";
  if (stage === "quality") return "quality";
  if (stage.startsWith("sink:")) return "sinks";
  return "stateful";  // window:, join:, dedup:, rule: (unique, referential)
}

function Step({ f }: { f: StageFigures }) {
  return (
    <li className="step" data-testid={`step-${f.stage}`}>
      <span className="step-name">{f.stage}</span>
      <span className="step-counts">in <b data-n="in">{fmt(f.records_in)}</b> · out <b data-n="out">{fmt(f.records_out)}</b>
        {" "}· dropped <b data-n="dropped">{fmt(f.dropped)}</b> · failed <b data-n="failed">{fmt(f.failed)}</b></span>
    </li>
  );
}

function Stage({ title, items, counter, testid, steps }: { title: string; items: string[];
  counter: string; testid: string; steps?: StageFigures[] }) {
  return (
    <li className="stage" data-testid={testid}>
      <div className="stage-title">{title}</div>
      {steps && steps.length ? <ul className="steps">{steps.map((f) => <Step key={f.stage} f={f} />)}</ul>
        : <div className="stage-items">{items.length ? items.join(", ") : "—"}</div>}
      <div className="stage-counter">{counter}</div>
    </li>
  );
}

export function PipelineDetail({ id, session }: { id: string; session: Session }) {
  const samples = useLive(2);
  const tick = samples.length ? samples[samples.length - 1].at : 0;
  const [p, error, reload] = useAsync(() => api<Pipeline>("GET", `/api/v1/pipelines/${id}`), [id, tick]);
  const [st] = useAsync(() => api<StatusView>("GET", `/api/v1/pipelines/${id}/status`), [id, tick]);
  const [runs] = useAsync(() => api<{ items: Run[] }>("GET", `/api/v1/pipelines/${id}/runs?limit=20`),
                          [id]);
  if (!p) return <section><Problem error={error} />{!error && "Loading…"}</section>;
  const spec = p.spec as Spec;
  const s = st?.stats;
  const source = (spec.source ?? {}) as Spec;
  const sinks = Object.keys((spec.sinks ?? {}) as Spec);
  const since = (t: string | null | undefined) => t ? Math.max(0, (Date.now() - Date.parse(t)) / 1000) : null;
  const age = since(st?.updated_at);
  const fresh = since(s?.last_event_time);
  const steps = (group: string) => (s?.stages ?? []).filter((f) => groupOf(f.stage) === group);
  return (
    <section>
      <h1>{p.name} <Badge state={p.state} /></h1>
      <p className="muted">version {p.version} · desired {p.desired} · <a href={`#/dlq/${p.id}`}>dead letters</a>
        {st?.reason && <> · <span className="problem-inline">{st.reason}</span></>}</p>
      <Actions p={p} session={session} done={reload} />
      <h2>Topology</h2>
      <ol className="topology" aria-label="topology">
        <Stage testid="stage-source" title={`source (${String(source.type ?? "kafka")})`}
               items={(source.topics as string[] | undefined) ?? []} counter={`in ${fmt(s?.events_in)}`} />
        <Stage testid="stage-transforms" title="transforms" items={kinds(spec.transforms)}
               steps={steps("transforms")} counter={`out ${fmt(s?.events_out)}`} />
        <Stage testid="stage-quality" title="quality" items={kinds(spec.quality)} steps={steps("quality")}
               counter={`score ${pct(s?.quality_score)} · dlq ${fmt(s?.dlq_records)}`} />
        <Stage testid="stage-stateful" title="stateful" items={kinds(spec.stateful)}
               steps={steps("stateful")} counter="" />
        <Stage testid="stage-sinks" title="sinks" items={sinks} steps={steps("sinks")}
               counter={`written ${fmt(s?.rows_written)}`} />
      </ol>
      <dl className="facts">
        <dt>Consumer lag</dt><dd data-testid="lag">{fmt(s?.consumer_lag)}</dd>
        <dt>Events/s (since start)</dt><dd>{fmt(s?.events_per_s, 2)}</dd>
        <dt>Success rate</dt><dd>{pct(s?.success_rate)}</dd>
        <dt>Last event read</dt><dd data-testid="freshness">{fresh === null ? "–" : `${fmt(fresh, 0)} s ago`}</dd>
        <dt>Status reported</dt><dd>{age === null ? "–" : `${fmt(age, 0)} s ago`}</dd>
        <dt>Freshness p50 / p99</dt><dd data-testid="freshness-pct">{s?.freshness_p50_s == null ? "–"
          : `${fmt(s.freshness_p50_s, 2)} s / ${fmt(s.freshness_p99_s, 2)} s`}</dd>
        <dt>Restarts</dt><dd data-testid="restarts">{fmt(s?.restarts)}</dd>
        <dt>Errors</dt><dd>{fmt(s?.errors)}</dd>
      </dl>
      <h2>Processes</h2>
      <div className="scroll"><table>
        <thead><tr><th>Role</th><th>PID</th><th>Host</th><th>Restarts</th><th>Started</th></tr></thead>
        <tbody>{(st?.processes ?? []).map((x) => <tr key={x.pid}><td>{x.role}</td><td>{x.pid}</td>
          <td>{x.host}</td><td>{x.restarts}</td><td>{new Date(x.started_at).toLocaleString()}</td></tr>)}
          {st && !st.processes.length && <tr><td colSpan={5}>None running.</td></tr>}</tbody>
      </table></div>
      <h2>Run history</h2>
      <div className="scroll"><table>
        <thead><tr><th>Run</th><th>Outcome</th><th>Started</th><th>In</th><th>Out</th><th>Failed</th></tr></thead>
        <tbody>{(runs?.items ?? []).map((r) => <tr key={r.run_id}><td>{r.run_id}</td><td>{r.outcome}</td>
          <td>{new Date(r.started_at).toLocaleString()}</td><td>{r.rows_in}</td><td>{r.rows_out}</td>
          <td>{r.rows_failed}</td></tr>)}
          {runs && !runs.items.length && <tr><td colSpan={6}>No batch run (a streaming pipeline runs continuously).</td></tr>}</tbody>
      </table></div>
      <h2>Spec</h2>
      <pre className="code" data-testid="spec">{stringify(spec)}</pre>
    </section>
  );
}
