import type { Figures } from "./api";
import type { Sample } from "./ui";

/** Events per second in and out between consecutive samples (summed over pipelines, or
 * for one pipeline): counters are read, rates are worked out here. */
export function rates(samples: Sample[], id?: string): { at: number; in: number | null; out: number | null }[] {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.at - a.at) / 1000;
    const pick = (s: Sample) => s.m.pipelines.filter((p) => !id || p.id === id);
    const sum = (ps: Figures[], k: "events_in" | "events_out") =>
      ps.reduce((t, p) => t + (p.stats[k] ?? 0), 0);
    const [pa, pb] = [pick(a), pick(b)];
    const d = (k: "events_in" | "events_out") => Math.max(0, sum(pb, k) - sum(pa, k)) / dt;
    out.push({ at: b.at, in: dt > 0 ? d("events_in") : null, out: dt > 0 ? d("events_out") : null });
  }
  return out;
}
