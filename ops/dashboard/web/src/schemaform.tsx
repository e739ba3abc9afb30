import { useState } from "react";
import { stringify } from "yaml";

/** A form generated from a JSON Schema (pydantic's: $defs/$ref, anyOf with null, enums,
 * arrays of scalars, nested objects); its value is shown as the YAML to paste in a spec. */
type S = Record<string, unknown>;

function resolve(schema: S, root: S): S {
  let s = schema;
  for (let i = 0; i < 10 && typeof s.$ref === "string"; i++) {
    const name = (s.$ref as string).split("/").pop()!;
    s = { ...((root.$defs as S)?.[name] as S ?? {}), ...Object.fromEntries(
      Object.entries(s).filter(([k]) => k !== "$ref")) };
  }
  const any = (s.anyOf ?? s.oneOf) as S[] | undefined;
  if (any) {
    const real = any.filter((x) => x.type !== "null");
    if (real.length === 1) return resolve({ ...real[0], title: s.title, default: s.default,
                                            description: s.description }, root);
  }
  return s;
}

function Field({ name, schema, root, value, set, path, needed }: { name: string; schema: S; root: S;
  value: unknown; set: (v: unknown) => void; path: string; needed: boolean }) {
  const s = resolve(schema, root);
  const label = String(s.title ?? name);
  const id = `f-${path}`;
  const hint = s.description ? String(s.description) : undefined;
  if (s.type === "object" && s.properties) {
    return <fieldset><legend>{label}</legend>
      <Fields schema={s} root={root} value={(value as S) ?? {}} set={set} path={path} /></fieldset>;
  }
  let input;
  if (Array.isArray(s.enum)) {
    input = <select id={id} value={String(value ?? s.default ?? "")} onChange={(e) => set(e.target.value || undefined)}>
      <option value="">(default)</option>
      {(s.enum as unknown[]).map((x) => <option key={String(x)}>{String(x)}</option>)}</select>;
  } else if (s.type === "boolean") {
    input = <input id={id} type="checkbox" checked={Boolean(value ?? s.default)} onChange={(e) => set(e.target.checked)} />;
  } else if (s.type === "integer" || s.type === "number") {
    input = <input id={id} type="number" placeholder={s.default === undefined ? "" : String(s.default)}
      value={value === undefined ? "" : String(value)}
      onChange={(e) => set(e.target.value === "" ? undefined : Number(e.target.value))} />;
  } else if (s.type === "array") {
    input = <input id={id} placeholder="comma separated" value={Array.isArray(value) ? value.join(", ") : ""}
      onChange={(e) => set(e.target.value ? e.target.value.split(",").map((x) => x.trim()) : undefined)} />;
  } else {
    input = <input id={id} type={s.format === "password" ? "password" : "text"} autoComplete="off"
      placeholder={s.default === undefined ? "" : String(s.default)} value={String(value ?? "")}
      onChange={(e) => set(e.target.value || undefined)} />;
  }
  return <div className="field"><label htmlFor={id}>{label}{needed ? " *" : ""}</label>
    {input}{hint && <small>{hint}</small>}</div>;
}

function Fields({ schema, root, value, set, path }: { schema: S; root: S; value: S;
  set: (v: S) => void; path: string }) {
  const props = (schema.properties ?? {}) as Record<string, S>;
  const required = new Set(Array.isArray(schema.required) ? schema.required as string[] : []);
  return <>{Object.entries(props).map(([k, p]) => (
    <Field key={k} name={k} path={`${path}-${k}`} root={root}
           schema={p} needed={required.has(k)} value={value[k]}
           set={(v) => { const next = { ...value }; if (v === undefined) delete next[k]; else next[k] = v; set(next); }} />))}</>;
}

export function SchemaForm({ schema, title }: { schema: S; title: string }) {
  const [value, setValue] = useState<S>({});
  return (
    <form className="schema-form" onSubmit={(e) => e.preventDefault()} aria-label={`${title} settings`}>
      <Fields schema={resolve(schema, schema)} root={schema} value={value} set={setValue} path={title} />
      <h4>YAML</h4>
      <pre className="code">{stringify(value)}</pre>
    </form>
  );
}
