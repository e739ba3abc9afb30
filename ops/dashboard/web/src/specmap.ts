import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document } from "yaml";

export interface LineError { line: number; field: string; message: string }

/** "spec.transforms[0].type" -> ["transforms", 0, "type"] */
export function fieldPath(field: string): (string | number)[] {
  const rest = field.replace(/^spec\.?/, "");
  const out: (string | number)[] = [];
  for (const part of rest.split(".").filter(Boolean)) {
    const m = part.match(/^([^[]*)((\[\d+\])*)$/);
    if (!m) { out.push(part); continue; }
    if (m[1]) out.push(m[1]);
    for (const i of m[2].matchAll(/\[(\d+)\]/g)) out.push(Number(i[1]));
  }
  return out;
}

/** The line (1-based) of the deepest node of ``path`` present in the document: a key's own
 * line when the path ends on a key, its parent's when the field is missing. */
export function lineOf(doc: Document, lc: LineCounter, path: (string | number)[]): number {
  let node: unknown = doc.contents;
  let offset = 0;
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(key));
      if (!pair) break;
      offset = (isScalar(pair.key) && pair.key.range ? pair.key.range[0] : offset);
      node = pair.value;
    } else if (isSeq(node) && typeof key === "number" && node.items[key]) {
      node = node.items[key];
      const r = (node as { range?: [number, number, number] }).range;
      if (r) offset = r[0];
    } else break;
  }
  return lc.linePos(offset).line;
}

export interface Parsed { value: unknown; errors: LineError[]; doc: Document; lc: LineCounter }

export function parseSpec(text: string): Parsed {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false });
  const errors = doc.errors.map((e) => ({ line: lc.linePos(e.pos[0]).line, field: "(yaml)",
                                          message: e.message.split("\n")[0] }));
  return { value: errors.length ? undefined : doc.toJS(), errors, doc, lc };
}

/** A line diff (longest common subsequence): " " same, "-" deployed only, "+" new only. */
export function diffLines(a: string, b: string): [string, string][] {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length;
  const t: number[][] = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    t[i][j] = x[i] === y[j] ? t[i + 1][j + 1] + 1 : Math.max(t[i + 1][j], t[i][j + 1]);
  const out: [string, string][] = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
    else if (t[i + 1][j] >= t[i][j + 1]) out.push(["-", x[i++]]);
    else out.push(["+", y[j++]]);
  }
  while (i < n) out.push(["-", x[i++]]);
  while (j < m) out.push(["+", y[j++]]);
  return out;
}
