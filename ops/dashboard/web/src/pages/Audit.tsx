import { useState } from "react";
import { api } from "../api";
import { Problem, useAsync } from "../ui";

interface Entry { who: string | null; role: string | null; action: string; method: string;
  path: string; target: string | null; at: string; status: number; outcome: string;
  request_id: string }
interface Page { items: Entry[]; next_cursor: string | null }

/** GET /api/v1/audit (admins; oldest first, paginated): shown newest first. */
async function load(): Promise<Entry[]> {
  const out: Entry[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < 20; i++) {
    const page: Page = await api<Page>("GET", "/api/v1/audit?limit=1000" +
      (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    out.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return out.reverse();
}

export function Audit() {
  const [q, setQ] = useState("");
  const [outcome, setOutcome] = useState("");
  const [data, error] = useAsync(load, []);
  const items = (data ?? []).filter((e) => (!outcome || e.outcome === outcome) &&
    `${e.who} ${e.action} ${e.target} ${e.path}`.includes(q));
  return (
    <section>
      <h1>Audit</h1>
      <div className="toolbar">
        <label>Search <input type="search" value={q} onChange={(e) => setQ(e.target.value)}
                             placeholder="who, action, target" /></label>
        <label>Outcome <select value={outcome} onChange={(e) => setOutcome(e.target.value)}>
          {["", "succeeded", "denied", "failed"].map((o) => <option key={o} value={o}>{o || "any"}</option>)}
        </select></label>
      </div>
      <Problem error={error} />
      <div className="scroll"><table>
        <thead><tr><th>When</th><th>Who</th><th>Role</th><th>Action</th><th>Target</th>
          <th>Status</th><th>Outcome</th><th>Request</th></tr></thead>
        <tbody>{items.map((e) => <tr key={e.request_id + e.action} data-testid="audit-row">
          <td>{new Date(e.at).toLocaleString()}</td><td>{e.who ?? "–"}</td><td>{e.role ?? "–"}</td>
          <td>{e.action}</td><td>{e.target ?? ""}</td><td>{e.status}</td>
          <td><span className={`badge badge-${e.outcome === "succeeded" ? "running" : "failed"}`}>{e.outcome}</span></td>
          <td><code>{e.request_id}</code></td></tr>)}
          {data && !items.length && <tr><td colSpan={8}>No record.</td></tr>}</tbody>
      </table></div>
    </section>
  );
}
