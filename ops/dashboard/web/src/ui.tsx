import { useEffect, useRef, useState } from "react";
import { Chart, registerables, type ChartConfiguration } from "chart.js";
import { ApiError, follow, type Monitoring } from "./api";

Chart.register(...registerables);
Chart.defaults.animation = false;

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

/** A Chart.js line chart whose datasets are replaced on every render. */
export function LineChart({ labels, series, title, testid }: {
  labels: string[]; series: { label: string; data: (number | null)[] }[]; title: string;
  testid: string;
}) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart | null>(null);
  useEffect(() => {
    const config: ChartConfiguration<"line"> = {
      type: "line",
      data: { labels: [], datasets: [] },
      options: { responsive: true, maintainAspectRatio: false,
                 plugins: { title: { display: true, text: title } },
                 scales: { y: { beginAtZero: true } } },
    };
    chart.current = new Chart(canvas.current!, config);
    return () => chart.current?.destroy();
  }, [title]);
  useEffect(() => {
    const c = chart.current;
    if (!c) return;
    c.data.labels = labels;
    c.data.datasets = series.map((s) => ({ label: s.label, data: s.data, tension: 0.2,
                                           pointRadius: 0, spanGaps: true }));
    c.update();
  });
  return <div className="chart" data-testid={testid}><canvas ref={canvas} role="img"
    aria-label={title} /></div>;
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
