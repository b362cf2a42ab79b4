// The inbox client against a running Herald (test/herald.mjs starts one per file).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { readFileSync } from "node:fs";
import { InboxClient, HeraldError, backoffDelay, DEFAULT_BACKOFF } from "../dist/index.js";
import { startHerald, eventually } from "./herald.mjs";

let herald;
before(async () => {
  herald = await startHerald();
});
after(async () => {
  await herald?.stop();
});

/** A WebSocket constructor that remembers its sockets, so a test can drop one. */
function recordingWebSocket() {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  return { Recording, sockets };
}

test("pages cover the inbox newest first with no item twice, and the counts follow reads, dismissals and read-all", async () => {
  const token = await herald.user("js-pages");
  for (let i = 1; i <= 5; i++) await herald.send("js-pages", `item ${i}`);
  const client = new InboxClient({ baseUrl: herald.base, token });

  const first = await client.list({ limit: 2 });
  assert.equal(first.items.length, 2);
  assert.equal(first.unread_count, 5);
  assert.ok(first.next_cursor);
  const titles = [];
  for await (const item of client.all(2)) titles.push(item.title);
  assert.deepEqual(titles, ["item 5", "item 4", "item 3", "item 2", "item 1"]);
  assert.equal(await client.unreadCount(), 5);

  await client.read(first.items[0].id);
  assert.equal(await client.unreadCount(), 4);
  await client.dismiss(first.items[1].id);
  const after = await client.list({ limit: 10 });
  assert.equal(after.items.length, 4);
  assert.ok(!after.items.some((i) => i.id === first.items[1].id));
  assert.equal(await client.readAll(), 3);
  assert.equal(await client.unreadCount(), 0);
  assert.equal((await client.list({ unreadOnly: true })).items.length, 0);
});

test("seen, archived and bulk actions filter pages and counts, and reach the other device as marked events", async () => {
  const token = await herald.user("js-states");
  for (let i = 1; i <= 4; i++) await herald.send("js-states", `s ${i}`);
  const phone = new InboxClient({ baseUrl: herald.base, token, WebSocket });
  const laptop = new InboxClient({ baseUrl: herald.base, token });
  const marked = [];
  let opened = 0;
  phone.on("marked", (m) => marked.push(m));
  phone.on("open", () => opened++);
  phone.connect();
  await eventually(() => opened === 1, "the feed to open");

  const page = await laptop.list();
  assert.deepEqual([page.unread_count, page.unseen_count], [4, 4]);
  assert.equal(page.items[0].seen, false);
  const [s4, s3, s2, s1] = page.items;
  assert.equal(await laptop.seenAll(), 4);
  assert.deepEqual(await laptop.counts(), { unread_count: 4, unseen_count: 0 });
  await laptop.archive([s1.id, s2.id]);
  assert.deepEqual(
    (await laptop.list()).items.map((i) => i.title),
    ["s 4", "s 3"],
  );
  const archived = await laptop.list({ archived: "only" });
  assert.deepEqual(archived.items.map((i) => i.title), ["s 2", "s 1"]);
  assert.ok(archived.items.every((i) => i.archived && i.archived_at && i.seen));
  await laptop.unarchive([s2.id]);
  const r = await laptop.bulk("read", { before: s3.cursor });
  assert.deepEqual(r, { updated: 2, not_found: [] });
  assert.deepEqual(await laptop.counts(), { unread_count: 2, unseen_count: 0 });
  const missing = await laptop.bulk("read", { ids: [s4.id, "00000000-0000-7000-8000-000000000000"] });
  assert.deepEqual(missing, { updated: 1, not_found: ["00000000-0000-7000-8000-000000000000"] });
  await assert.rejects(laptop.bulk("read", { ids: [] }), (e) => e.status === 422 && e.code === "invalid");
  await eventually(() => marked.length === 5, "five marked events on the phone");
  assert.deepEqual(marked[0], { action: "seen", ids: [], before: null, all: true });
  assert.deepEqual(marked[1], { action: "archive", ids: [s1.id, s2.id], before: null, all: false });
  assert.deepEqual(marked[3], { action: "read", ids: [], before: s3.cursor, all: false });
  assert.deepEqual(marked[4].ids, [s4.id]);
  assert.equal((await laptop.list({ status: "unread" })).items.length, 1);
  phone.disconnect();
});

test("a retracted item is reported by the live feed and leaves the pages and counts", async () => {
  const token = await herald.user("js-retract");
  const client = new InboxClient({ baseUrl: herald.base, token, WebSocket });
  const retracted = [];
  const items = [];
  let opened = 0;
  client.on("retracted", (r) => retracted.push(r.id));
  client.on("notification", (i) => items.push(i));
  client.on("open", () => opened++);
  client.connect();
  await eventually(() => opened === 1, "the feed to open");
  const campaign = await herald.send("js-retract", "oops");
  await herald.send("js-retract", "fine");
  await eventually(() => items.length === 2, "both items live");
  await herald.admin("DELETE", `/v1/campaigns/${campaign}/notifications`);
  await eventually(() => retracted.length === 1, "the retraction");
  assert.equal(retracted[0], items[0].id);
  const page = await client.list();
  assert.deepEqual(page.items.map((i) => i.title), ["fine"]);
  assert.equal(page.unread_count, 1);
  client.disconnect();
});

test("a changed item is reported by the live feed with its new text and lists with it", async () => {
  const token = await herald.user("js-update");
  const client = new InboxClient({ baseUrl: herald.base, token, WebSocket });
  const updated = [];
  const items = [];
  let opened = 0;
  client.on("updated", (i) => updated.push(i));
  client.on("notification", (i) => items.push(i));
  client.on("open", () => opened++);
  client.connect();
  try {
    await eventually(() => opened === 1, "the feed to open");
    const campaign = await herald.send("js-update", "draft");
    await eventually(() => items.length === 1, "the item live");
    await herald.admin("PATCH", `/v1/campaigns/${campaign}/content`, { content: { title: "final", body: "b" } });
    await eventually(() => updated.length === 1, "the update");
    assert.equal(updated[0].id, items[0].id);
    assert.equal(updated[0].title, "final");
    assert.equal(updated[0].read, false);
    const page = await client.list();
    assert.deepEqual(page.items.map((i) => i.title), ["final"]);
  } finally {
    // A failed assertion must not leave the socket holding the test run open.
    client.disconnect();
  }
});

test("errors come back as HeraldError with the status and code of the error body", async () => {
  const token = await herald.user("js-errors");
  const client = new InboxClient({ baseUrl: herald.base, token });
  await assert.rejects(client.read("00000000-0000-7000-8000-000000000000"), (e) => {
    assert.ok(e instanceof HeraldError);
    assert.equal(e.status, 404);
    assert.equal(e.code, "not_found");
    return true;
  });
  await assert.rejects(client.list({ limit: 0 }), (e) => e.status === 422 && e.code === "invalid");
  const stranger = new InboxClient({ baseUrl: herald.base, token: "not-a-token" });
  await assert.rejects(stranger.unreadCount(), (e) => e.status === 401 && e.code === "unauthorized");
});

test("the live feed delivers new items and read states made on another device", async () => {
  const token = await herald.user("js-live");
  const { Recording } = recordingWebSocket();
  const phone = new InboxClient({ baseUrl: herald.base, token, WebSocket: Recording });
  const laptop = new InboxClient({ baseUrl: herald.base, token });
  const items = [];
  const reads = [];
  let readAll = 0;
  let opened = 0;
  phone.on("notification", (i) => items.push(i));
  phone.on("read", (r) => reads.push(r.id));
  phone.on("read_all", () => readAll++);
  phone.on("open", () => opened++);
  phone.connect();
  await eventually(() => opened === 1, "the feed to open");

  await herald.send("js-live", "live one");
  await eventually(() => items.length === 1, "the live item");
  assert.equal(items[0].title, "live one");
  assert.equal(items[0].read, false);
  assert.equal(phone.resumeCursor, items[0].cursor);

  await laptop.read(items[0].id);
  await eventually(() => reads.length === 1, "the read from the other device");
  assert.equal(reads[0], items[0].id);
  await laptop.readAll();
  await eventually(() => readAll === 1, "read-all from the other device");
  phone.disconnect();
});

test("a dropped feed reconnects with backoff and resumes after the last item: nothing missed, nothing twice", async () => {
  const token = await herald.user("js-resume");
  const { Recording, sockets } = recordingWebSocket();
  const client = new InboxClient({
    baseUrl: herald.base,
    token,
    WebSocket: Recording,
    // Long enough that items are written while the client is away.
    backoff: { initialMs: 1500, maxMs: 1500, jitter: 0 },
  });
  const titles = [];
  const closes = [];
  const opens = [];
  client.on("notification", (i) => titles.push(i.title));
  client.on("close", (c) => closes.push(c));
  client.on("open", (o) => opens.push(o));
  client.connect();
  await eventually(() => opens.length === 1, "the feed to open");
  await herald.send("js-resume", "before the drop");
  await eventually(() => titles.length === 1, "the first item");
  const resumeAt = client.resumeCursor;

  // The connection dies without a close handshake (a network drop).
  sockets[0].terminate();
  await eventually(() => closes.length === 1, "the close");
  assert.equal(closes[0].retryInMs, 1500);
  await herald.send("js-resume", "while away 1");
  await herald.send("js-resume", "while away 2");
  await eventually(() => opens.length === 2, "the reconnect");
  assert.equal(opens[1].resumedFrom, resumeAt);
  await herald.send("js-resume", "after the reconnect");
  await eventually(() => titles.length === 4, "every item");
  // A moment for any duplicate to show up.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(titles, ["before the drop", "while away 1", "while away 2", "after the reconnect"]);
  client.disconnect();
  await eventually(() => closes.length === 2, "the final close");
  assert.equal(closes[1].retryInMs, null);
});

test("backoff grows by its factor up to its cap, and jitter only ever shortens it", () => {
  const b = { ...DEFAULT_BACKOFF, initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, b, () => 0)),
    [100, 200, 400, 800, 1000, 1000],
  );
  assert.equal(backoffDelay(2, b, () => 1), 200);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(3, b);
    assert.ok(d >= 400 && d <= 800, `${d}`);
  }
  assert.equal(backoffDelay(3, { ...b, jitter: 1 }, () => 1), 0);
});

test("Herald serves the demo inbox page and, beside it, this client as built", async () => {
  const page = await fetch(`${herald.base}/demo`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type"), /^text\/html/);
  assert.match(await page.text(), /import \{ InboxClient \} from "\/demo\/inbox-client\.js"/);
  const module = await fetch(`${herald.base}/demo/inbox-client.js`);
  assert.match(module.headers.get("content-type"), /^text\/javascript/);
  const built = readFileSync(new URL("../dist/index.js", import.meta.url), "utf8");
  assert.equal(await module.text(), built, "the binary embeds the client's current build");
});
