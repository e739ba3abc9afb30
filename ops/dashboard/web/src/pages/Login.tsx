import { useState, type FormEvent } from "react";
import { login, loginWithKey } from "../api";
import { Problem } from "../ui";

export function Login() {
  const [user, setUser] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const [key, setKey] = useState("");
  async function run(e: FormEvent, f: () => Promise<void>) {
    e.preventDefault();
    setBusy(true);
    try { await f(); } catch (err) { setError(err); } finally { setBusy(false); }
  }
  return (
    <main className="login">
      <form onSubmit={(e) => run(e, () => login(user, password))} aria-label="log in">
        <h1>DataFlow</h1>
        <label>User <input name="username" autoComplete="username" value={user} autoFocus
                           onChange={(e) => setUser(e.target.value)} required /></label>
        <label>Password <input name="password" type="password" autoComplete="current-password"
                               value={password} onChange={(e) => setPassword(e.target.value)}
                               required /></label>
        <button type="submit" disabled={busy}>Log in</button>
        <Problem error={error} />
      </form>
      <form onSubmit={(e) => run(e, () => loginWithKey(key))} aria-label="log in with an API key">
        <label>API key <input name="api_key" type="password" autoComplete="off" value={key}
                              onChange={(e) => setKey(e.target.value)} required /></label>
        <button type="submit" disabled={busy}>Log in with the key</button>
      </form>
    </main>
  );
}
