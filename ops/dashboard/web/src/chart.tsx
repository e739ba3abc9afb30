// Chart.js, in its own chunk: only the pages that chart load it (see App's lazy pages).
import { useEffect, useRef } from "react";
import {
  CategoryScale, Chart, Legend, LineController, LineElement, LinearScale, PointElement, Title,
  Tooltip, type ChartConfiguration,
} from "chart.js";

// line charts only: the pieces they use (a smaller chunk than every registerable)
Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale, Title,
               Tooltip, Legend);
Chart.defaults.animation = false;

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
  // how many values the chart draws (a test reads it: a chart with data, not an empty frame)
  const points = series.reduce((n, s) => n + s.data.filter((v) => v !== null).length, 0);
  return <div className="chart" data-testid={testid} data-points={points}><canvas ref={canvas} role="img"
    aria-label={title} /></div>;
}

