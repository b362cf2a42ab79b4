// A `herald serve` of the test's own: a scratch data directory, a port the kernel picks (read
// from the line it prints), an admin key, and helpers that use the admin API. The binary is
// HERALD_BIN, else the workspace's debug build.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.HERALD_BIN ?? resolve(here, "../../../target/debug/herald");
const ADMIN_KEY = "js-client-test-admin-key-0123456789abcdef";

export async function startHerald() {
  const data = mkdtempSync(join(tmpdir(), "herald-js-"));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_")));
  const child = spawn(BIN, ["serve"], {
    env: {
      ...env,
      HERALD_DATA_DIR: data,
      HERALD_LISTEN: "127.0.0.1:0",
      HERALD_ADMIN_KEY: ADMIN_KEY,
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const base = await new Promise((ok, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error(`herald serve did not start: ${stderr}`)), 30_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/Herald is listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.on("exit", (code) => fail(new Error(`herald serve exited (${code}): ${stderr}`)));
  });

  async function admin(method, path, body) {
    const resp = await fetch(`${base}${path}`, {
      method,
      headers: { Authorization: `Bearer ${ADMIN_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  return {
    base,
    adminKey: ADMIN_KEY,
    admin,
    /** A user and an inbox token for it. */
    async user(id) {
      await admin("PUT", `/v1/users/${id}`, {});
      return (await admin("POST", `/v1/users/${id}/token`)).token;
    },
    /** An in-app campaign to one user; resolves once its row is written. */
    async send(userId, title) {
      const c = await admin("POST", "/v1/campaigns", {
        audience: { user: userId },
        channels: ["in_app"],
        content: { title, body: `body of ${title}` },
      });
      for (let i = 0; i < 200; i++) {
        const got = await admin("GET", `/v1/campaigns/${c.id}`);
        if (got.status === "completed") return c.id;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`campaign ${c.id} did not complete`);
    },
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.on("exit", r)));
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** Resolves when `predicate()` holds (polled), or fails after `ms`. */
export async function eventually(predicate, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
