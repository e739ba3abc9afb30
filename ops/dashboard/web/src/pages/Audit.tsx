import { useState } from "react";
import { api } from "../api";
import { Problem, useAsync } from "../ui";

type Entry = Record<string, unknown>;

/** GET /api/v1/audit (admins): who did what, when, how it ended. */
export function Audit() {
  const [q, setQ] = useState("");
  const [data, error] = useAsync(() => api<{ items: Entry[] } | Entry[]>("GET", "/api/v1/audit"), []);
  const items = (Array.isArray(data) ? data : data?.items ?? [])
    .filter((e) => JSON.stringify(e).includes(q));
  const cols = ["at", "when", "who", "user", "role", "action", "target", "outcome", "request_id"]
    .filter((c) => items.some((e) => c in e));
  return (
    <section>
      <h1>Audit</h1>
      <label>Filter <input type="search" value={q} onChange={(e) => setQ(e.target.value)} /></label>
      <Problem error={error} />
      <div className="scroll"><table>
        <thead><tr>{cols.map((c) => <th key={c}>{c}</th>)}</tr></thead>
        <tbody>{items.map((e, i) => <tr key={i} data-testid="audit-row">{cols.map((c) =>
          <td key={c}>{String(e[c] ?? "")}</td>)}</tr>)}
          {data && !items.length && <tr><td>No record.</td></tr>}</tbody>
      </table></div>
    </section>
  );
}
