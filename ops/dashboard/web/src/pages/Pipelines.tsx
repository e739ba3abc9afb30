import { useState } from "react";
import { isAdmin, listPipelines, type Session } from "../api";
import { Actions } from "../actions";
import { Badge, Problem, pct, useAsync, useLive } from "../ui";

const STATES = ["", "running", "starting", "paused", "stopped", "failed"];

export function Pipelines({ session }: { session: Session }) {
  const samples = useLive(2);
  const [pipes, error, reload] = useAsync(listPipelines, [samples.length ? samples[samples.length - 1].at : 0]);
  const [q, setQ] = useState("");
  const [state, setState] = useState("");
  const figures = new Map((samples[samples.length - 1]?.m.pipelines ?? []).map((f) => [f.id, f]));
  const shown = (pipes ?? []).filter((p) => p.name.includes(q) && (!state || p.state === state));
  return (
    <section>
      <h1>Pipelines</h1>
      <div className="toolbar">
        <label>Search <input type="search" value={q} onChange={(e) => setQ(e.target.value)}
                             placeholder="name" /></label>
        <label>State <select value={state} onChange={(e) => setState(e.target.value)}>
          {STATES.map((s) => <option key={s} value={s}>{s || "any"}</option>)}</select></label>
        {isAdmin(session) && <a className="button primary" href="#/editor">New pipeline</a>}
      </div>
      <Problem error={error} />
      <div className="scroll">
        <table>
          <thead><tr><th>Name</th><th>State</th><th>Desired</th><th>Version</th>
            <th>Success rate</th><th>Actions</th></tr></thead>
          <tbody>
            {shown.map((p) => {
              const rate = figures.get(p.id)?.stats.success_rate ?? null;
              return (
                <tr key={p.id} data-testid={`row-${p.name}`}>
                  <td><a href={`#/pipelines/${p.id}`}>{p.name}</a></td>
                  <td><Badge state={p.state} /></td>
                  <td>{p.desired}</td>
                  <td>{p.version}</td>
                  <td><div className="bar" title={pct(rate)}><div style={{ width: `${(rate ?? 0) * 100}%` }} />
                    <span>{pct(rate)}</span></div></td>
                  <td><Actions p={p} session={session} done={reload} /></td>
                </tr>);
            })}
            {pipes && !shown.length && <tr><td colSpan={6}>No pipeline matches.</td></tr>}
          </tbody>
        </table>
      </div>
    </section>
  );
}
