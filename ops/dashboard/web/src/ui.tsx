import { useEffect, useState } from "react";
import { ApiError, follow, type Monitoring } from "./api";

export function Badge({ state }: { state: string }) {
  return <span className={`badge badge-${state}`} data-testid="state">{state}</span>;
}

export function Card({ label, value, testid }: { label: string; value: string; testid: string }) {
  return (
    <div className="card" data-testid={testid}>
      <div className="card-label">{label}</div>
      <div className="card-value">{value}</div>
    </div>
  );
}

export function fmt(n: number | null | undefined, digits = 0): string {
  return n === null || n === undefined ? "–" : n.toLocaleString(undefined,
    { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
export const pct = (n: number | null | undefined) => (n === null || n === undefined ? "–"
  : `${(n * 100).toFixed(1)} %`);

export function Problem({ error }: { error: unknown }) {
  if (!error) return null;
  const msg = error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}`
    : String(error);
  return <div className="problem" role="alert">{msg}</div>;
}

export interface Sample { at: number; m: Monitoring }

/** The live figures (SSE), with the last ``keep`` samples for charts. */
export function useLive(keep = 120): Sample[] {
  const [samples, setSamples] = useState<Sample[]>([]);
  useEffect(() => follow((m, at) => setSamples((s) => [...s.slice(-(keep - 1)), { at, m }])),
            [keep]);
  return samples;
}

export function useAsync<T>(load: () => Promise<T>, deps: unknown[]):
    [T | undefined, unknown, () => void] {
  const [value, setValue] = useState<T>();
  const [error, setError] = useState<unknown>();
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    load().then((v) => { if (live) { setValue(v); setError(undefined); } },
                (e) => { if (live) setError(e); });
    return () => { live = false; };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, n]);
  return [value, error, () => setN((x) => x + 1)];
}

export function timeLabel(at: number): string {
  return new Date(at).toLocaleTimeString(undefined, { hour12: false });
}
