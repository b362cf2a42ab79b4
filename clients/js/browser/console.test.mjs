// The web console (`/console`) in Debian's chromium, headless: log in with the admin key,
// preview and save a template, size a segment filter live, create a campaign from the form
// with a preview for its user, watch it complete, explain it for a user in it and one out of
// it, and see the demo inbox (`/demo`) of that
// user receive it live; read there, it shows read in a second tab. Screenshots of each page go
// to artifacts/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ARTIFACTS, setUp } from "./browser.mjs";

const env = setUp();

async function newPage(errors) {
  const page = await env.browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on("pageerror", (e) => errors.push(e));
  return page;
}

test("the console creates a campaign that a demo inbox receives live, read on one tab and shown read on another", async () => {
  const errors = [];
  await env.herald.admin("PUT", "/v1/users/maria", { attributes: { name: "Maria", locale: "pt-BR", plan: "pro" } });
  await env.herald.admin("PUT", "/v1/users/joe", { attributes: { name: "Joe", plan: "free" } });
  const token = (await env.herald.admin("POST", "/v1/users/maria/token")).token;

  const inbox = await newPage(errors);
  await inbox.goto(`${env.herald.base}/demo#token=${token}`);
  await inbox.locator('#status[data-state="live"]').waitFor({ timeout: 15_000 });

  // Log in.
  const console = await newPage(errors);
  await console.goto(`${env.herald.base}/console`);
  await console.fill("#admin-key", "not the key");
  await console.click('button:has-text("Log in")');
  await console.locator("#toast", { hasText: "not the admin key" }).waitFor();
  await console.fill("#admin-key", env.herald.adminKey);
  await console.click('button:has-text("Log in")');
  await console.locator("#create-campaign").waitFor();

  // A template with a Portuguese variant, previewed for Maria, then saved.
  await console.click('nav >> text=Templates');
  await console.fill("#template-id", "welcome");
  await console.fill("#template-content", JSON.stringify({
    in_app: { title: "Hi {{ user.name }}", body: "Order {{ data.order }}" },
    locales: { pt: { in_app: { title: "Olá {{ user.name }}", body: "Pedido {{ data.order }}" } } },
  }));
  await console.fill("#template-user", "maria");
  await console.fill("#template-data", '{"order": "A-17"}');
  await console.click("#template-preview-button");
  await console.locator('[data-preview-channel="in_app"] pre', { hasText: "Olá Maria" }).waitFor();
  assert.match(await console.locator('[data-preview-channel="in_app"] pre').textContent(), /Pedido A-17/);
  await console.click("text=Save template");
  await console.locator("#toast", { hasText: "Template saved" }).waitFor();
  await console.screenshot({ path: `${ARTIFACTS}console-template-preview.png` });

  // A segment filter sized as it is typed.
  await console.click("nav >> text=Users & segments");
  await console.fill("#user-id", "maria");
  await console.click('button:has-text("Look up")');
  await console.locator("pre", { hasText: '"locale": "pt-BR"' }).waitFor();
  await console.fill("#segment-name", "pro-users");
  await console.fill("#segment-filter", '{"attr": "plan", "eq": "pro"}');
  await console.locator("#segment-size-value", { hasText: "1" }).waitFor();
  await console.fill("#segment-filter", '{"attr": "plan", "in": ["pro", "free"]}');
  await console.locator("#segment-size-value", { hasText: "2" }).waitFor();
  await console.fill("#segment-filter", '{"attr": "plan", "eq": "pro"}');
  await console.locator("#segment-size-value", { hasText: "1" }).waitFor();
  await console.click("text=Save segment");
  await console.locator("#toast", { hasText: "Segment saved" }).waitFor();
  await console.screenshot({ path: `${ARTIFACTS}console-segment-editor.png` });

  // The campaign, from the form: to Maria, inline content, previewed first.
  await console.click("nav >> text=Campaigns");
  await console.fill("#audience-value", "maria");
  await console.fill("#content-title", "Hello {{ user.name }}");
  await console.fill("#content-body", "Your order {{ data.order }} is on its way");
  await console.fill("#content-data", '{"order": "B-42"}');
  await console.fill("#preview-user", "maria");
  await console.click("#preview-button");
  await console.locator('[data-preview-channel="in_app"] pre', { hasText: "Hello Maria" }).waitFor();
  await console.click("text=Create campaign");
  await console.locator("#campaign-status", { hasText: "completed" }).waitFor({ timeout: 15_000 });
  assert.equal(await console.locator("#written").textContent(), "1");
  assert.doesNotMatch(await console.locator("#campaign").textContent(), /null|undefined/);
  // What it did for Maria, and for Joe, who was not in it.
  await console.fill("#explain-user", "maria");
  await console.click('button:has-text("Explain")');
  await console.locator("#explain-inbox", { hasText: "written to the user's inbox" }).waitFor();
  assert.match(await console.locator("#explain-audience").textContent(), /^In the audience: the campaign's user/);
  await console.fill("#explain-user", "joe");
  await console.click('button:has-text("Explain")');
  await console.locator("#explain-audience", { hasText: "Not in the audience: the campaign is for `maria`" }).waitFor();
  assert.doesNotMatch(await console.locator("#explain").textContent(), /null|undefined/);
  await console.screenshot({ path: `${ARTIFACTS}console-campaign-progress.png` });

  // The inbox got it live; read there, a second tab shows it read.
  const item = (page) => page.locator("#items li", { hasText: "Hello Maria" });
  await item(inbox).waitFor({ timeout: 15_000 });
  assert.match(await item(inbox).textContent(), /Your order B-42 is on its way/);
  const second = await newPage(errors);
  await second.goto(`${env.herald.base}/demo#token=${token}`);
  await second.locator('#status[data-state="live"]').waitFor({ timeout: 15_000 });
  assert.equal(await item(second).getAttribute("class"), "unread");
  await item(inbox).locator('[data-act="read"]').click();
  await second.locator("#items li.read", { hasText: "Hello Maria" }).waitFor({ timeout: 15_000 });
  await inbox.screenshot({ path: `${ARTIFACTS}demo-inbox-from-console.png` });

  // Presence-aware push: Maria has her inbox open, so the push is not sent, and the campaign's
  // explanation for her says so.
  await console.click("nav >> text=Campaigns");
  await console.fill("#audience-value", "maria");
  await console.fill("#content-title", "While you are here");
  await console.fill("#content-body", "No buzz for this one");
  await console.check('input[data-channel="push"]');
  await console.selectOption("#push-when", "offline");
  await console.click("text=Create campaign");
  await console.locator("#campaign-status", { hasText: "completed" }).waitFor({ timeout: 15_000 });
  await item(inbox).waitFor();
  await inbox.locator("#items li", { hasText: "While you are here" }).waitFor({ timeout: 15_000 });
  await console.locator('#deliveries tr[data-channel="push"] td:nth-child(5)', { hasText: "1" }).waitFor({ timeout: 15_000 });
  await console.fill("#explain-user", "maria");
  await console.click('button:has-text("Explain")');
  await console.locator('#explain-channels tr[data-channel="push"]', { hasText: "suppressed_online" }).waitFor();
  await console.screenshot({ path: `${ARTIFACTS}console-explain-presence.png` });

  // Retracted from the console: the open inbox drops the item, the counters show the push
  // that was not sent (suppressed) and nothing cancelled (it had gone its way already).
  await console.click("#retract");
  await console.locator("#toast", { hasText: "gone from every inbox" }).waitFor();
  await inbox.locator("#items li", { hasText: "While you are here" }).waitFor({ state: "detached", timeout: 15_000 });
  await item(inbox).waitFor();
  await console.locator("#campaign-status", { hasText: "completed" }).waitFor();
  await inbox.screenshot({ path: `${ARTIFACTS}demo-inbox-after-retraction.png` });

  // The campaign list and the analytics page render.
  await console.click("nav >> text=Campaigns");
  await console.locator("#campaigns td", { hasText: "completed" }).first().waitFor();
  await console.click("nav >> text=Analytics");
  await console.locator("#health").waitFor();
  await console.screenshot({ path: `${ARTIFACTS}console-analytics.png` });
  await console.click("nav >> text=Dead letters");
  await console.locator("text=No dead letters.").waitFor();
  await console.click("nav >> text=Webhooks");
  await console.fill("#webhook-id", "orders");
  await console.fill("#webhook-url", "https://example.com/hooks");
  await console.click("text=Save webhook");
  await console.locator("code", { hasText: "whsec_" }).waitFor();
  assert.deepEqual(errors, []);
});
