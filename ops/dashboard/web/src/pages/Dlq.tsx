import { useState } from "react";
import { api, canMutate, listPipelines, type DeadLetter, type Session } from "../api";
import { Problem, useAsync } from "../ui";

interface Report { read: number; replayed: number; complete: boolean; error: string | null }

export function Dlq({ id, session }: { id?: string; session: Session }) {
  const [pipes] = useAsync(listPipelines, []);
  const [stage, setStage] = useState("");
  const [reason, setReason] = useState("");
  const [n, setN] = useState(0);
  const [list, error] = useAsync(() => id
    ? api<{ topic: string; items: DeadLetter[] }>("GET", `/api/v1/pipelines/${id}/dlq?limit=200` +
        (stage ? `&stage=${encodeURIComponent(stage)}` : ""))
    : Promise.resolve(undefined), [id, stage, n]);
  const [picked, setPicked] = useState<Set<string>>(new Set());
  const [shown, setShown] = useState<DeadLetter>();
  const [report, setReport] = useState<Report[]>();
  const [problem, setProblem] = useState<unknown>();
  const key = (d: DeadLetter) => `${d.partition}/${d.offset}`;
  const items = (list?.items ?? []).filter((d) => d.error.includes(reason));
  const chosen = items.filter((d) => picked.has(key(d)));
  async function replay() {
    setProblem(undefined);
    try {
      setReport([await api<Report>("POST", `/api/v1/pipelines/${id}/dlq/replay`,
        { records: chosen.map((d) => ({ partition: d.partition, offset: d.offset })) })]);
      setPicked(new Set());
      setN(n + 1);
    } catch (e) { setProblem(e); }
  }
  return (
    <section>
      <h1>Dead letters</h1>
      <div className="toolbar">
        <label>Pipeline <select value={id ?? ""} onChange={(e) => { location.hash = `#/dlq/${e.target.value}`; }}>
          <option value="">(choose)</option>
          {(pipes ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}</select></label>
        <label>Stage <input value={stage} placeholder="rule:* or a rule name"
                            onChange={(e) => setStage(e.target.value)} /></label>
        <label>Reason <input value={reason} placeholder="contains" onChange={(e) => setReason(e.target.value)} /></label>
      </div>
      <Problem error={error} />
      {list && <p className="muted">topic {list.topic} · {items.length} shown</p>}
      <div className="scroll"><table>
        <thead><tr>{canMutate(session) && <th><span className="sr">select</span></th>}<th>Offset</th>
          <th>Stage</th><th>Reason</th><th>Source</th><th>Failed</th><th></th></tr></thead>
        <tbody>{items.map((d) => <tr key={key(d)} data-testid="dead-letter">
          {canMutate(session) && <td><input type="checkbox" aria-label={`select ${key(d)}`}
            checked={picked.has(key(d))} onChange={(e) => { const s = new Set(picked);
              if (e.target.checked) s.add(key(d)); else s.delete(key(d)); setPicked(s); }} /></td>}
          <td>{key(d)}</td><td>{d.stage}</td><td>{d.error}</td>
          <td>{d.topic}@{d.source_partition}/{d.source_offset}</td>
          <td>{d.failed_at ? new Date(d.failed_at).toLocaleString() : "–"}</td>
          <td><button onClick={() => setShown(d)}>show</button></td></tr>)}
          {list && !items.length && <tr><td colSpan={7}>No dead letter.</td></tr>}</tbody>
      </table></div>
      {shown && <div className="panel" data-testid="payload" role="region" aria-label="dead letter">
        <h2>Record {key(shown)} <button onClick={() => setShown(undefined)}>close</button></h2>
        <p><strong>{shown.stage}</strong>: {shown.error}</p>
        <h3>Key</h3><pre className="code">{shown.key ?? "null"}</pre>
        <h3>Original payload</h3><pre className="code">{shown.value === null
          ? (canMutate(session) ? "null" : "(hidden: operators and admins see payloads)") : pretty(shown.value)}</pre>
      </div>}
      {canMutate(session) && id && <p>
        <button className="primary" disabled={!chosen.length} onClick={replay}>Replay selected</button>
        {" "}<span className="muted">replays only the selected records to the source topic (each must
          still be pending: a replay cursor skips what was replayed before)</span></p>}
      {report && <p role="status" data-testid="replay-report">
        replayed {report.reduce((t, r) => t + r.replayed, 0)} of {report.reduce((t, r) => t + r.read, 0)} read
        {report.some((r) => !r.complete) && " (incomplete)"}</p>}
      <Problem error={problem} />
    </section>
  );
}

function pretty(text: string): string {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}
