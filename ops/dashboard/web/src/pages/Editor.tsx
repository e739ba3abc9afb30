import { useEffect, useMemo, useRef, useState } from "react";
import { stringify } from "yaml";
import { api, isAdmin, type Pipeline, type Session } from "../api";
import { diffLines, fieldPath, lineOf, parseSpec, type LineError } from "../specmap";
import { Problem } from "../ui";

const TEMPLATE = `name: my_pipeline
source:
  topics: [orders]
  format: json
quality:
  - name: amount_positive
    type: range
    field: amount
    min: 0
dlq:
  topic: orders-dlq
`;

interface SpecCheck { valid: boolean; errors: { loc: string; line: number | null; msg: string }[];
  note: string | null }

interface DryRun { outputs: { topic: string; key: unknown; value: unknown }[];
  dead_letters: { index: number; stage: string; error: string }[]; note: string | null;
  events: { key: unknown; value: unknown; topic: string | null }[] | null }

function parseEvents(text: string): { key?: unknown; value: unknown }[] {
  const t = text.trim();
  if (!t) return [];
  if (t.startsWith("[")) return (JSON.parse(t) as unknown[]).map((value) => ({ value }));
  return t.split("\n").filter((l) => l.trim()).map((l) => ({ value: JSON.parse(l) }));
}

export function Editor({ id, session }: { id?: string; session: Session }) {
  const [deployed, setDeployed] = useState<Pipeline>();
  const [text, setText] = useState(id ? "" : TEMPLATE);
  const [errors, setErrors] = useState<LineError[]>([]);
  const [note, setNote] = useState("");
  const [checking, setChecking] = useState(false);
  const [events, setEvents] = useState('{"amount": 5}\n{"amount": -1}');
  const [dry, setDry] = useState<DryRun>();
  const [problem, setProblem] = useState<unknown>();
  const [review, setReview] = useState(false);
  const [saved, setSaved] = useState<Pipeline>();
  const gutter = useRef<HTMLPreElement>(null);
  const area = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    if (!id) return;
    api<Pipeline>("GET", `/api/v1/pipelines/${id}`).then((p) => {
      setDeployed(p); setText(stringify(p.spec));
    }, setProblem);
  }, [id]);

  const parsed = useMemo(() => parseSpec(text), [text]);

  // validation as you type: the API judges the text (200 either way: no HTTP error)
  useEffect(() => {
    if (parsed.errors.length) { setErrors(parsed.errors); setNote(""); return; }
    let live = true;
    setChecking(true);
    const timer = setTimeout(async () => {
      try {
        const check = await api<SpecCheck>("POST", "/api/v1/pipelines/validate", { spec: text });
        if (!live) return;
        setErrors(check.errors.map((x) => ({ field: x.loc, message: x.msg,
          line: x.line ?? lineOf(parsed.doc, parsed.lc, fieldPath(x.loc)) })));
        setNote(check.note ?? "");  // valid, but beyond what a dry run covers
      } catch (e) {
        if (live) setProblem(e);
      } finally { if (live) setChecking(false); }
    }, 300);
    return () => { live = false; clearTimeout(timer); };
  }, [parsed, text]);

  const bad = new Set(errors.map((e) => e.line));
  const lines = text.split("\n");
  const admin = isAdmin(session);

  async function dryRun() {
    setProblem(undefined);
    try {
      setDry(await api<DryRun>("POST", "/api/v1/pipelines/dry-run",
                               { spec: parsed.value, events: parseEvents(events) }));
    } catch (e) { setProblem(e); }
  }
  /** The same dry run on the last records of the spec's source topic (read by the API). */
  async function dryRunSource() {
    setProblem(undefined);
    try {
      setDry(await api<DryRun>("POST", "/api/v1/pipelines/dry-run/sample",
                               { spec: parsed.value, limit: 10 }));
    } catch (e) { setProblem(e); }
  }
  async function apply() {
    setProblem(undefined);
    try {
      const p = deployed
        ? await api<Pipeline>("PUT", `/api/v1/pipelines/${deployed.id}`, text, "application/yaml",
                              { "If-Match": `"${deployed.version}"` })
        : await api<Pipeline>("POST", "/api/v1/pipelines", text, "application/yaml");
      setSaved(p); setReview(false);
      if (!deployed) location.hash = `#/pipelines/${p.id}`;
      else setDeployed(p);
    } catch (e) { setProblem(e); }
  }
  const diff = diffLines(deployed ? stringify(deployed.spec) : "", text);
  return (
    <section>
      <h1>{deployed ? `Edit ${deployed.name} (version ${deployed.version})` : "New pipeline"}</h1>
      <div className="editor">
        <pre className="gutter" ref={gutter} aria-hidden="true">{lines.map((_, i) =>
          <span key={i} className={bad.has(i + 1) ? "bad" : ""} data-line={i + 1}>{i + 1}{"\n"}</span>)}</pre>
        <textarea ref={area} aria-label="pipeline spec (YAML)" name="spec" spellCheck={false}
                  value={text} onChange={(e) => setText(e.target.value)}
                  onScroll={(e) => { if (gutter.current) gutter.current.scrollTop = e.currentTarget.scrollTop; }}
                  onKeyDown={(e) => { if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey) {
                    // two spaces, as YAML wants; Escape then Tab leaves the editor
                    if ((e.target as HTMLTextAreaElement).dataset.escaped === "1") return;
                    e.preventDefault();
                    const t = e.currentTarget, at = t.selectionStart;
                    setText(text.slice(0, at) + "  " + text.slice(t.selectionEnd));
                    requestAnimationFrame(() => { t.selectionStart = t.selectionEnd = at + 2; });
                  } else (e.target as HTMLTextAreaElement).dataset.escaped = e.key === "Escape" ? "1" : "0"; }}
                  rows={Math.max(14, lines.length + 1)} />
      </div>
      <p className="muted" aria-live="polite" data-testid="validity">
        {checking ? "checking…" : errors.length ? `${errors.length} problem${errors.length > 1 ? "s" : ""}`
          : "valid"}{note && ` · ${note}`}</p>
      <ul className="errors">{errors.map((e, i) =>
        <li key={i} data-testid="spec-error" data-line={e.line}>
          <button className="link" onClick={() => jump(area.current, text, e.line)}>line {e.line}</button>
          {" "}<code>{e.field}</code>: {e.message}</li>)}</ul>
      {text.includes("*****") && <p className="problem">This spec holds masked secrets (********):
        reference them as {"${env:NAME}"} before applying.</p>}
      <h2>Dry run</h2>
      <label className="block">Sample events (one JSON value per line, or a JSON array)
        <textarea name="events" rows={4} value={events} onChange={(e) => setEvents(e.target.value)} /></label>
      <button onClick={dryRun} disabled={!!errors.length}>Dry run</button>
      {" "}<button onClick={dryRunSource} disabled={!!errors.length}>Dry run on the source topic's last 10 records</button>
      {dry && <div data-testid="dry-result">
        {dry.note && <p className="muted">{dry.note}</p>}
        {dry.events && <><h3>Sampled from the source topic ({dry.events.length})</h3>
          <pre className="code" data-testid="dry-sample">{dry.events.map((e) => JSON.stringify(e.value)).join("\n")}</pre></>}
        <h3>Outputs ({dry.outputs.length})</h3>
        <pre className="code">{dry.outputs.map((o) => JSON.stringify(o.value)).join("\n")}</pre>
        <h3>Dead letters ({dry.dead_letters.length})</h3>
        <ul>{dry.dead_letters.map((d) => <li key={d.index}>event {d.index + 1}: {d.stage}: {d.error}</li>)}</ul>
      </div>}
      {admin && <>
        <h2>Apply</h2>
        {!review ? <button className="primary" disabled={!!errors.length}
                           onClick={() => setReview(true)}>Review changes</button> : <>
          <pre className="code diff" data-testid="diff">{diff.map(([k, l], i) =>
            <span key={i} className={k === "+" ? "add" : k === "-" ? "del" : ""}>{k} {l}{"\n"}</span>)}</pre>
          <button className="primary" onClick={apply}>{deployed ? "Apply new version" : "Create pipeline"}</button>
          {" "}<button onClick={() => setReview(false)}>Back</button>
        </>}
        {saved && <p role="status">Saved version {saved.version}.</p>}
      </>}
      <Problem error={problem} />
    </section>
  );
}

function jump(t: HTMLTextAreaElement | null, text: string, line: number) {
  if (!t) return;
  const at = text.split("\n").slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
  t.focus();
  t.setSelectionRange(at, at);
}
