// The demo inbox page (`/demo`, built on this client) in a real browser: Debian's chromium,
// headless, driven by playwright-core. A campaign sent to the user shows up live in an open
// tab; reading it there shows it read in a second tab; dismissing it in the second removes it
// from the first. Screenshots go to artifacts/ (CHROMIUM, else /usr/bin/chromium).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ARTIFACTS, setUp } from "./browser.mjs";

const env = setUp();

async function openInbox(token) {
  const page = await env.browser.newPage({ viewport: { width: 720, height: 640 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${env.herald.base}/demo#token=${token}`);
  await page.locator('#status[data-state="live"]').waitFor({ timeout: 15_000 });
  return { page, errors };
}

test("a campaign reaches the open demo inbox live, and read and dismiss cross to a second tab", async () => {
  const token = await env.herald.user("web-user");
  await env.herald.send("web-user", "Already there");
  const first = await openInbox(token);
  assert.equal(await first.page.locator("#items li").count(), 1);
  assert.equal(await first.page.locator("#unread").textContent(), "1");

  await env.herald.send("web-user", "Hello from a campaign");
  const item = (tab) => tab.page.locator("#items li", { hasText: "Hello from a campaign" });
  await item(first).waitFor({ timeout: 15_000 });
  assert.equal(await first.page.locator("#items li").first().locator(".title").textContent(), "Hello from a campaign");
  await first.page.locator('#unread[data-count="2"]').waitFor();
  await first.page.screenshot({ path: `${ARTIFACTS}demo-inbox-live.png` });

  const second = await openInbox(token);
  await item(second).waitFor();
  assert.equal(await item(second).getAttribute("class"), "unread");

  await item(first).locator('[data-act="read"]').click();
  await second.page.locator("#items li.read", { hasText: "Hello from a campaign" }).waitFor({ timeout: 15_000 });
  await second.page.locator('#unread[data-count="1"]').waitFor();
  await second.page.screenshot({ path: `${ARTIFACTS}demo-inbox-read-on-another-tab.png` });

  await item(second).locator('[data-act="dismiss"]').click();
  await item(first).waitFor({ state: "detached", timeout: 15_000 });
  assert.equal(await first.page.locator("#items li").count(), 1);
  assert.deepEqual([...first.errors, ...second.errors], []);
});
