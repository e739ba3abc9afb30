// The one client of the REST API: every data call carries the bearer token; a 401 ends
// the session (back to the login page).

export type Role = "viewer" | "operator" | "admin";
/** ``key``: ``token`` is an API key (sent as X-API-Key), not a bearer token. */
export interface Session { token: string; role: Role; user: string; key?: boolean }

export interface ErrorItem { field: string; message: string }
export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string,
              public field?: string, public errors: ErrorItem[] = []) { super(message); }
}

const KEY = "dataflow.session";
let session: Session | null = JSON.parse(sessionStorage.getItem(KEY) || "null");
const listeners = new Set<() => void>();

export function currentSession(): Session | null { return session; }
export function onSession(f: () => void): () => void {
  listeners.add(f);
  return () => { listeners.delete(f); };
}
export function setSession(s: Session | null): void {
  session = s;
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s)); else sessionStorage.removeItem(KEY);
  listeners.forEach((f) => f());
}

function headers(extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { Accept: "application/json", ...extra };
  if (session?.token && session.key) h["X-API-Key"] = session.token;
  else if (session?.token) h.Authorization = `Bearer ${session.token}`;
  return h;
}

async function fail(r: Response): Promise<never> {
  let body: { error?: { code: string; message: string; field?: string; errors?: ErrorItem[] } } = {};
  try { body = await r.json(); } catch { /* not JSON */ }
  const e = body.error;
  if (r.status === 401 && session?.token) setSession(null);
  throw new ApiError(r.status, e?.code ?? "http_error", e?.message ?? `HTTP ${r.status}`,
                     e?.field, e?.errors ?? []);
}

export async function api<T>(method: string, path: string, body?: unknown,
                             contentType = "application/json",
                             extra: Record<string, string> = {}): Promise<T> {
  const init: RequestInit = { method, headers: headers(body === undefined ? extra
    : { "Content-Type": contentType, ...extra }) };
  if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
  const r = await fetch(path, init);
  if (!r.ok) return fail(r);
  return (await r.json()) as T;
}

/** POST /api/v1/auth/token, then GET /api/v1/auth/me for the role the API gives. */
export async function login(username: string, password: string): Promise<void> {
  const t = await api<{ access_token: string }>("POST", "/api/v1/auth/token",
                                                { username, password });
  const r = await fetch("/api/v1/auth/me", { headers: { Accept: "application/json",
                                                         Authorization: `Bearer ${t.access_token}` } });
  if (!r.ok) return fail(r);
  const me = (await r.json()) as { name: string; role: Role };
  setSession({ token: t.access_token, role: me.role, user: me.name });
}

/** An API key instead of a password: GET /api/v1/auth/me with it says whose and its role. */
export async function loginWithKey(key: string): Promise<void> {
  const r = await fetch("/api/v1/auth/me", { headers: { Accept: "application/json",
                                                         "X-API-Key": key } });
  if (!r.ok) return fail(r);
  const me = (await r.json()) as { name: string; role: Role };
  setSession({ token: key, role: me.role, user: me.name, key: true });
}

// ------------------------------------------------------------------ live figures (SSE)

export interface Stats {
  consumer_lag: number | null; complete: boolean; events_in: number | null;
  events_out: number | null; dlq_records: number | null; rows_written: number | null;
  errors: number | null; events_per_s: number | null; success_rate: number | null;
  quality_score: number | null; last_event_time?: string | null;
  quality_failures?: Record<string, number>; freshness_p50_s?: number | null;
  freshness_p99_s?: number | null; restarts?: number | null; stages?: StageFigures[];
}
/** One step's records since its processes started (GET .../status, the event stream). */
export interface StageFigures { stage: string; records_in: number; records_out: number;
  dropped: number; failed: number }
export interface Figures { id: string; name: string; state: string; stats: Stats }
export interface Monitoring { pipelines: Figures[] }

/** Follows GET /api/v1/events (Server-Sent Events read through fetch, so the bearer
 * token goes in a header); each stream ends after a while and is opened again. */
export function follow(onFigures: (m: Monitoring, at: number) => void): () => void {
  let stopped = false;
  let ctrl: AbortController | null = null;
  (async () => {
    while (!stopped) {
      ctrl = new AbortController();
      try {
        const r = await fetch("/api/v1/events", { headers: headers({ Accept: "text/event-stream" }),
                                                  signal: ctrl.signal });
        if (!r.ok || !r.body) {
          if (r.status === 401) { await fail(r); }
          await new Promise((res) => setTimeout(res, 2000));
          continue;
        }
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data: "))
              .map((l) => l.slice(6)).join("\n");
            if (data && block.includes("event: figures")) onFigures(JSON.parse(data), Date.now());
          }
        }
      } catch {
        if (stopped) return;
        await new Promise((res) => setTimeout(res, 1000));
      }
    }
  })();
  return () => { stopped = true; ctrl?.abort(); };
}

// ------------------------------------------------------------------ resources

export interface Pipeline {
  id: string; name: string; version: number; state: string; desired: string;
  spec: Record<string, unknown>; created_at: string; updated_at: string;
}
export interface Process { pid: number; host: string; role: string; restarts: number;
  metrics_url: string | null; started_at: string }
export interface StatusView { id: string; state: string; desired: string; version: number | null;
  reason: string | null; processes: Process[]; stats: Stats; updated_at: string | null }
export interface Run { run_id: string; version: number; backfill: boolean; started_at: string;
  ended_at: string; rows_in: number; rows_out: number; rows_failed: number;
  outcome: string; reason: string | null }
export interface DeadLetter { partition: number; offset: number; stage: string; error: string;
  topic: string | null; source_partition: number | null; source_offset: number | null;
  failed_at: number | null; key: string | null; value: string | null }
export interface CatalogEntry { kind: string; role: string | null; description: string;
  json_schema: Record<string, unknown>; example: Record<string, unknown> | null }

export const listPipelines = () =>
  api<{ items: Pipeline[] }>("GET", "/api/v1/pipelines?limit=500").then((r) => r.items);
export const canMutate = (s: Session | null) => s?.role === "operator" || s?.role === "admin";
export const isAdmin = (s: Session | null) => s?.role === "admin";
