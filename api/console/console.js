// Herald's web console: a client of the admin API on the same origin, nothing else. The admin
// key is asked once and kept in this tab's sessionStorage. Every value shown is set as text
// (never as HTML), so nothing a user or a template holds runs here.

const KEY = "herald-admin-key";
const $main = document.getElementById("main");
let timer = null;

// --- DOM and API helpers -------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(message, error = false) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = `show${error ? " error" : ""}`;
  clearTimeout(t.hideTimer);
  t.hideTimer = setTimeout(() => (t.className = ""), 3500);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${sessionStorage.getItem(KEY) ?? ""}`,
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const json = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    if (resp.status === 401) logout();
    throw new ApiError(resp.status, json?.error?.code ?? "http", json?.error?.message ?? `HTTP ${resp.status}`);
  }
  return json;
}

/** Runs `f`, showing its error as a toast; the value of `f`, or undefined. */
async function attempt(f) {
  try {
    return await f();
  } catch (e) {
    toast(e.message, true);
    return undefined;
  }
}

function parseJson(text, what) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${what} is not JSON`);
  }
}

/** Replaces `el`'s children with those given, skipping the absent ones. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const FINAL = ["completed", "cancelled", "failed"];
const CHANNELS = ["in_app", "push", "email", "sms", "webhook"];

// --- login ---------------------------------------------------------------------------------

function logout() {
  sessionStorage.removeItem(KEY);
  route();
}

function loginView() {
  const key = h("input", { type: "password", id: "admin-key", autocomplete: "off", size: 48 });
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        sessionStorage.setItem(KEY, key.value.trim());
        try {
          await api("GET", "/v1/campaigns?limit=1");
          location.hash = "#campaigns";
          route();
        } catch (err) {
          sessionStorage.removeItem(KEY);
          toast(err.status === 401 ? "That is not the admin key" : err.message, true);
        }
      },
    },
    h("label", {}, h("span", {}, "Admin key"), key),
    h("button", { class: "primary", type: "submit" }, "Log in"),
  );
  return h("section", {}, h("h2", {}, "Log in"), form);
}

// --- campaigns -----------------------------------------------------------------------------

async function campaignsView() {
  const templates = (await api("GET", "/v1/templates?limit=1000")).templates;
  const segments = (await api("GET", "/v1/segments?limit=1000")).segments;

  const audienceKind = h("select", { id: "audience-kind" },
    ["user", "users", "segment", "all"].map((k) => h("option", { value: k }, k)));
  const audienceValue = h("input", { id: "audience-value", size: 40, placeholder: "user id" });
  const segmentSelect = h("select", { id: "audience-segment", hidden: true },
    segments.map((s) => h("option", { value: s.name }, s.name)));
  audienceKind.addEventListener("change", () => {
    const k = audienceKind.value;
    audienceValue.hidden = k === "all" || k === "segment";
    segmentSelect.hidden = k !== "segment";
    audienceValue.placeholder = k === "users" ? "ids, comma separated" : "user id";
  });

  const contentKind = h("select", { id: "content-kind" },
    h("option", { value: "inline" }, "inline title and body"),
    h("option", { value: "template" }, "a template"));
  const title = h("input", { id: "content-title", size: 50 });
  const body = h("textarea", { id: "content-body", rows: 3 });
  const inline = h("div", {}, h("label", {}, h("span", {}, "Title"), title), h("label", {}, h("span", {}, "Body"), body));
  const templateSelect = h("select", { id: "content-template", hidden: true },
    templates.map((t) => h("option", { value: t.id }, t.id)));
  contentKind.addEventListener("change", () => {
    inline.hidden = contentKind.value !== "inline";
    templateSelect.hidden = contentKind.value !== "template";
  });
  const channels = CHANNELS.map((c) =>
    h("label", { style: "display:inline-block;margin-right:.8rem" },
      h("input", { type: "checkbox", value: c, checked: c === "in_app", "data-channel": c }), ` ${c}`));
  const data = h("textarea", { id: "content-data", rows: 2, placeholder: '{"order": "A-17"}' });
  const category = h("input", { id: "category", size: 20 });
  const priority = h("select", { id: "priority" }, ["normal", "low", "high", "urgent"].map((p) => h("option", { value: p }, p)));
  const strategy = h("select", { id: "strategy" },
    h("option", { value: "auto" }, "by audience size"),
    h("option", { value: "broadcast" }, "broadcast (stored once)"));
  const startsAt = h("input", { id: "starts-at", type: "datetime-local" });
  const expiresAt = h("input", { id: "expires-at", type: "datetime-local" });
  const pushWhen = h("select", { id: "push-when" },
    h("option", { value: "always" }, "always"),
    h("option", { value: "offline" }, "only to users without the inbox open"));
  const onlineDelay = h("input", { id: "online-delay", type: "number", min: 1, max: 86400, size: 6, placeholder: "seconds", hidden: true });
  pushWhen.addEventListener("change", () => (onlineDelay.hidden = pushWhen.value !== "offline"));
  const previewUser = h("input", { id: "preview-user", size: 20, placeholder: "user id" });
  const previewOut = h("div", { id: "preview" });

  function request() {
    const k = audienceKind.value;
    const v = audienceValue.value.trim();
    const audience =
      k === "all" ? { all: true }
      : k === "segment" ? { segment: segmentSelect.value }
      : k === "users" ? { users: v.split(",").map((s) => s.trim()).filter(Boolean) }
      : { user: v };
    const req = {
      audience,
      channels: channels.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value),
      priority: priority.value,
    };
    if (contentKind.value === "template") req.template = templateSelect.value;
    else req.content = { title: title.value, body: body.value };
    const d = parseJson(data.value, "Data");
    if (d !== undefined) req.data = d;
    if (category.value.trim()) req.category = category.value.trim();
    if (strategy.value !== "auto") req.strategy = strategy.value;
    // datetime-local is the browser's local time; the API takes RFC 3339.
    if (startsAt.value) req.starts_at = new Date(startsAt.value).toISOString();
    if (expiresAt.value) req.expires_at = new Date(expiresAt.value).toISOString();
    if (pushWhen.value === "offline") {
      req.push_when = "offline";
      if (onlineDelay.value) req.online_push_delay_s = Number(onlineDelay.value);
    }
    return req;
  }

  async function preview() {
    const req = request();
    const p = await api("POST", "/v1/previews/template", {
      ...(req.template ? { template: req.template } : { content: { in_app: req.content } }),
      user_id: previewUser.value.trim() || undefined,
      data: req.data,
    });
    previewOut.replaceChildren(
      h("p", { class: "muted" }, p.user_id ? `As ${p.user_id} gets it${p.locale ? ` (locale ${p.locale})` : ""}:` : "For no user in particular:"),
      ...Object.entries(p.rendered).map(([ch, c]) =>
        h("div", { "data-preview-channel": ch }, h("strong", {}, ch), h("pre", {}, Object.values(c).filter((x) => x !== null).join("\n")))),
    );
  }

  const form = h("form", {
    id: "create-campaign",
    onsubmit: (e) => {
      e.preventDefault();
      attempt(async () => {
        const c = await api("POST", "/v1/campaigns", request());
        toast(`Campaign created: ${c.strategy}, ${c.audience_size} users`);
        location.hash = `#campaigns/${c.id}`;
      });
    },
  },
  h("label", {}, h("span", {}, "Audience"), audienceKind, " ", audienceValue, segmentSelect),
  h("label", {}, h("span", {}, "Content"), contentKind, " ", templateSelect),
  inline,
  h("div", {}, h("span", { class: "muted" }, "Channels: "), channels),
  h("label", {}, h("span", {}, "Data (JSON)"), data),
  h("label", {}, h("span", {}, "Category"), category, h("span", { style: "min-width:2rem" }), " Priority ", priority),
  h("label", {}, h("span", {}, "Strategy"), strategy),
  h("label", {}, h("span", {}, "Starts at"), startsAt, " Expires at ", expiresAt),
  h("label", {}, h("span", {}, "Push"), pushWhen, " ", onlineDelay,
    h("span", { class: "muted" }, " (with a delay: pushed after it unless read)")),
  h("label", {}, h("span", {}, "Preview for"), previewUser, " ",
    h("button", { type: "button", id: "preview-button", onclick: () => attempt(preview) }, "Preview")),
  previewOut,
  h("button", { class: "primary", type: "submit" }, "Create campaign"));

  const list = h("tbody");
  const page = await api("GET", "/v1/campaigns?limit=50");
  for (const c of page.campaigns) {
    list.append(h("tr", {},
      h("td", {}, h("a", { href: `#campaigns/${c.id}` }, c.id.slice(0, 8))),
      h("td", { class: `status status-${c.status}` }, c.status),
      h("td", {}, c.strategy),
      h("td", {}, c.audience_size),
      h("td", {}, c.template ?? c.content?.title ?? ""),
      h("td", {}, when(c.created_at))));
  }
  return [
    h("section", {}, h("h2", {}, "New campaign"), form),
    h("section", {}, h("h2", {}, "Campaigns"),
      h("table", { id: "campaigns" }, h("thead", {}, h("tr", {}, ["id", "status", "strategy", "audience", "content", "created"].map((t) => h("th", {}, t)))), list)),
  ];
}

async function campaignView(id) {
  const box = h("section", { id: "campaign" });
  async function refresh() {
    const c = await api("GET", `/v1/campaigns/${encodeURIComponent(id)}`);
    const p = c.progress;
    const pct = p.batches_total ? Math.round((100 * p.batches_done) / p.batches_total) : FINAL.includes(c.status) ? 100 : 0;
    const deliveries = Object.entries(c.deliveries);
    fill(box,
      h("h2", {}, `Campaign ${c.id}`),
      h("p", {}, "Status ", h("span", { class: `status status-${c.status}`, id: "campaign-status" }, c.status),
        ` · ${c.strategy} · ${c.audience_size} users · created ${when(c.created_at)}`),
      h("div", { class: "bar", title: `${pct}%` }, h("div", { style: `width:${pct}%` })),
      h("table", {}, h("tbody", {},
        h("tr", {}, h("th", {}, "batches"), h("td", { id: "batches" }, `${p.batches_done} / ${p.batches_total}`)),
        h("tr", {}, h("th", {}, "in-app rows written"), h("td", { id: "written" }, p.notifications_written)),
        h("tr", {}, h("th", {}, "opted out / quiet hours"), h("td", {}, `${p.skipped_opted_out} / ${p.deferred_quiet_hours}`)),
        h("tr", {}, h("th", {}, "failed renders / batches"), h("td", {}, `${p.failed_render} / ${p.failed_batches}`)))),
      h("h2", {}, "Deliveries"),
      deliveries.length
        ? h("table", { id: "deliveries" },
          h("thead", {}, h("tr", {}, ["channel", "queued", "sent", "failed", "suppressed (online)", "cancelled"].map((t) => h("th", {}, t)))),
          h("tbody", {}, deliveries.map(([ch, d]) => h("tr", { "data-channel": ch }, h("td", {}, ch), h("td", {}, d.queued), h("td", {}, d.sent), h("td", {}, d.failed), h("td", {}, d.suppressed_online ?? 0), h("td", {}, d.cancelled ?? 0)))))
        : h("p", { class: "muted" }, "No channel sends (in-app only, or none yet)."),
      (c.failures ?? []).length ? h("pre", {}, c.failures.map((f) => `${f.user_id ?? `batch ${f.batch_no}`}: ${f.reason}`).join("\n")) : null,
      FINAL.includes(c.status) ? null
        : h("button", { class: "danger", id: "cancel", onclick: () => attempt(async () => {
          await api("POST", `/v1/campaigns/${encodeURIComponent(id)}/cancel`);
          toast("Cancelled");
          await refresh();
        }) }, "Cancel campaign"),
      // Sent (or sending): take it back from every inbox, and cancel what has not gone out.
      c.started_at
        ? h("button", { class: "danger", id: "retract", onclick: () => attempt(async () => {
          const r = await api("DELETE", `/v1/campaigns/${encodeURIComponent(id)}/notifications`);
          toast(`Retracted ${when(r.retracted_at)}: gone from every inbox`);
          await refresh();
        }) }, "Retract from inboxes")
        : null,
    );
    // Live while it runs; deliveries go on after the fan-out, so a little beyond.
    if (!FINAL.includes(c.status) || Object.values(c.deliveries).some((d) => d.sent + d.failed < d.queued)) {
      timer = setTimeout(() => attempt(refresh), 1000);
    }
  }
  await refresh();
  return [h("p", {}, h("a", { href: "#campaigns" }, "← campaigns")), box, explainView(id)];
}

/** What the campaign did for one user (`GET /v1/campaigns/{id}/recipients/{user_id}`). */
function explainView(id) {
  const user = h("input", { id: "explain-user", size: 30, placeholder: "user id" });
  const out = h("div", { id: "explain" });
  const form = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      attempt(async () => {
        const x = await api("GET", `/v1/campaigns/${encodeURIComponent(id)}/recipients/${encodeURIComponent(user.value.trim())}`);
        const channels = Object.entries(x.channels);
        fill(out,
          h("p", { id: "explain-audience" }, x.audience.included ? "In the audience: " : "Not in the audience: ", x.audience.reason,
            x.user_found ? "" : " (not in the directory)"),
          x.inbox
            ? h("p", { id: "explain-inbox" }, `Inbox: ${x.inbox.reason}`,
              x.inbox.read_at ? ` · read ${when(x.inbox.read_at)}` : "",
              x.inbox.dismissed_at ? ` · dismissed ${when(x.inbox.dismissed_at)}` : "")
            : null,
          channels.length
            ? h("table", { id: "explain-channels" },
              h("thead", {}, h("tr", {}, ["channel", "status", "why", "when"].map((t) => h("th", {}, t)))),
              h("tbody", {}, channels.map(([ch, v]) => h("tr", { "data-channel": ch },
                h("td", {}, ch),
                h("td", {}, v.status),
                h("td", {}, [v.reason, v.deferred_until ? `until ${when(v.deferred_until)}` : null, v.dead_letter_id ? `dead letter ${v.dead_letter_id}` : null].filter(Boolean).join(" · ")),
                h("td", {}, when(v.at))))))
            : null);
      });
    },
  }, h("label", {}, "User ", user), " ", h("button", {}, "Explain"));
  return h("section", {}, h("h2", {}, "What happened to a user"), form, out);
}

// --- users and segments --------------------------------------------------------------------

async function audienceView() {
  const userId = h("input", { id: "user-id", size: 30 });
  const userOut = h("div");
  const lookup = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      attempt(async () => {
        const id = encodeURIComponent(userId.value.trim());
        const [u, prefs, devices] = await Promise.all([
          api("GET", `/v1/users/${id}`),
          api("GET", `/v1/users/${id}/preferences`),
          api("GET", `/v1/users/${id}/devices`),
        ]);
        userOut.replaceChildren(h("pre", {}, JSON.stringify({ user: u, preferences: prefs, devices: devices.devices }, null, 2)));
      });
    },
  }, h("label", {}, h("span", {}, "User id"), userId, " ", h("button", {}, "Look up")));

  const name = h("input", { id: "segment-name", size: 30 });
  const filter = h("textarea", { id: "segment-filter", rows: 6 }, '{"attr": "plan", "eq": "pro"}');
  const size = h("div", { id: "segment-size", class: "muted" });
  let debounce = null;
  async function sizeIt() {
    let f;
    try {
      f = parseJson(filter.value, "The filter");
    } catch (e) {
      size.textContent = e.message;
      return;
    }
    try {
      const s = await api("POST", "/v1/previews/segment", { filter: f });
      size.replaceChildren(h("strong", { id: "segment-size-value" }, s.size), ` users match`,
        s.sample.length ? ` (${s.sample.join(", ")}${s.size > s.sample.length ? ", …" : ""})` : "");
    } catch (e) {
      size.textContent = e.message;
    }
  }
  filter.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(sizeIt, 250);
  });
  const list = h("tbody");
  async function load() {
    const segs = (await api("GET", "/v1/segments?limit=1000")).segments;
    list.replaceChildren(...segs.map((s) => h("tr", {},
      h("td", {}, h("a", { href: "#audience", onclick: () => { name.value = s.name; filter.value = JSON.stringify(s.filter, null, 2); sizeIt(); } }, s.name)),
      h("td", {}, h("code", {}, JSON.stringify(s.filter))),
      h("td", {}, h("button", { class: "danger", onclick: () => attempt(async () => { await api("DELETE", `/v1/segments/${encodeURIComponent(s.name)}`); await load(); }) }, "Delete")))));
  }
  await load();
  sizeIt();
  const editor = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      attempt(async () => {
        await api("PUT", `/v1/segments/${encodeURIComponent(name.value.trim())}`, { filter: parseJson(filter.value, "The filter") });
        toast("Segment saved");
        await load();
      });
    },
  },
  h("label", {}, h("span", {}, "Name"), name),
  h("label", {}, h("span", {}, "Filter"), filter),
  size,
  h("button", { class: "primary" }, "Save segment"));
  return [
    h("section", {}, h("h2", {}, "User"), lookup, userOut),
    h("div", { class: "row" },
      h("section", {}, h("h2", {}, "Segment"), editor),
      h("section", {}, h("h2", {}, "Segments"), h("table", {}, list))),
  ];
}

// --- templates -----------------------------------------------------------------------------

async function templatesView() {
  const id = h("input", { id: "template-id", size: 30 });
  const content = h("textarea", { id: "template-content", rows: 10 },
    JSON.stringify({ in_app: { title: "Hi {{ user.name }}", body: "Order {{ data.order }} shipped" } }, null, 2));
  const user = h("input", { id: "template-user", size: 20, placeholder: "user id" });
  const data = h("textarea", { id: "template-data", rows: 2 }, '{"order": "A-17"}');
  const out = h("div", { id: "template-preview" });
  const list = h("tbody");
  async function load() {
    const ts = (await api("GET", "/v1/templates?limit=1000")).templates;
    list.replaceChildren(...ts.map((t) => h("tr", {},
      h("td", {}, h("a", { href: "#templates", onclick: () => {
        id.value = t.id;
        const { id: _i, created_at: _c, updated_at: _u, ...rest } = t;
        content.value = JSON.stringify(rest, null, 2);
      } }, t.id)),
      h("td", {}, Object.keys(t).filter((k) => CHANNELS.includes(k)).join(", ")),
      h("td", {}, when(t.updated_at)),
      h("td", {}, h("button", { class: "danger", onclick: () => attempt(async () => { await api("DELETE", `/v1/templates/${encodeURIComponent(t.id)}`); await load(); }) }, "Delete")))));
  }
  await load();
  async function preview() {
    const p = await api("POST", "/v1/previews/template", {
      content: parseJson(content.value, "The content"),
      user_id: user.value.trim() || undefined,
      data: parseJson(data.value, "The data"),
    });
    out.replaceChildren(...Object.entries(p.rendered).map(([ch, c]) =>
      h("div", { "data-preview-channel": ch }, h("strong", {}, ch), h("pre", {}, Object.values(c).filter((x) => x !== null).join("\n")))));
  }
  const editor = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      attempt(async () => {
        await api("PUT", `/v1/templates/${encodeURIComponent(id.value.trim())}`, parseJson(content.value, "The content"));
        toast("Template saved");
        await load();
      });
    },
  },
  h("label", {}, h("span", {}, "Id"), id),
  h("label", {}, h("span", {}, "Content (JSON)"), content),
  h("label", {}, h("span", {}, "Preview for"), user, " with data"), data,
  h("p", {}, h("button", { type: "button", id: "template-preview-button", onclick: () => attempt(preview) }, "Preview"), " ",
    h("button", { class: "primary" }, "Save template")),
  out);
  return h("div", { class: "row" },
    h("section", {}, h("h2", {}, "Template"), editor),
    h("section", {}, h("h2", {}, "Templates"), h("table", {}, list)));
}

// --- webhooks and dead letters -------------------------------------------------------------

async function webhooksView() {
  const id = h("input", { id: "webhook-id", size: 20 });
  const url = h("input", { id: "webhook-url", size: 40, placeholder: "https://example.com/hooks/herald" });
  const categories = h("input", { id: "webhook-categories", size: 30, placeholder: "every category" });
  const secretOut = h("div");
  const list = h("tbody");
  function showSecret(w) {
    if (w.secret) secretOut.replaceChildren(h("p", {}, "Secret (shown this once): ", h("code", {}, w.secret)));
  }
  async function load() {
    const ws = (await api("GET", "/v1/webhooks?limit=1000")).webhooks;
    list.replaceChildren(...ws.map((w) => h("tr", {},
      h("td", {}, w.id), h("td", {}, w.url), h("td", {}, (w.categories ?? ["all"]).join(", ")),
      h("td", {},
        h("button", { onclick: () => attempt(async () => { showSecret(await api("POST", `/v1/webhooks/${encodeURIComponent(w.id)}/rotate-secret`)); await load(); }) }, "Rotate secret"), " ",
        h("button", { class: "danger", onclick: () => attempt(async () => { await api("DELETE", `/v1/webhooks/${encodeURIComponent(w.id)}`); await load(); }) }, "Delete")))));
  }
  await load();
  const form = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      attempt(async () => {
        const cats = categories.value.split(",").map((s) => s.trim()).filter(Boolean);
        showSecret(await api("PUT", `/v1/webhooks/${encodeURIComponent(id.value.trim())}`, { url: url.value.trim(), categories: cats.length ? cats : null }));
        toast("Webhook saved");
        await load();
      });
    },
  }, h("label", {}, h("span", {}, "Id"), id), h("label", {}, h("span", {}, "URL"), url),
  h("label", {}, h("span", {}, "Categories"), categories), h("button", { class: "primary" }, "Save webhook"), secretOut);
  return [h("section", {}, h("h2", {}, "Webhook"), form), h("section", {}, h("h2", {}, "Webhooks"), h("table", {}, list))];
}

async function deadLettersView() {
  const channel = h("select", { id: "dl-channel" }, h("option", { value: "" }, "every channel"), CHANNELS.slice(1).map((c) => h("option", { value: c }, c)));
  const list = h("tbody");
  async function load() {
    const q = channel.value ? `&channel=${channel.value}` : "";
    const ls = (await api("GET", `/v1/dead-letters?limit=200${q}`)).dead_letters;
    list.replaceChildren(...(ls.length ? ls.map((l) => h("tr", {},
      h("td", {}, when(l.created_at)), h("td", {}, l.channel), h("td", {}, l.sends), h("td", {}, l.reason),
      h("td", {}, l.replayed_at ? `replayed ${when(l.replayed_at)}`
        : h("button", { onclick: () => attempt(async () => { await api("POST", `/v1/dead-letters/${l.id}/replay`); toast("Replayed"); await load(); }) }, "Replay"))))
      : [h("tr", {}, h("td", { class: "muted" }, "No dead letters."))]));
  }
  channel.addEventListener("change", () => attempt(load));
  await load();
  return h("section", {}, h("h2", {}, "Dead letters"), h("label", {}, h("span", {}, "Channel"), channel),
    h("table", {}, h("thead", {}, h("tr", {}, ["when", "channel", "sends", "reason", ""].map((t) => h("th", {}, t)))), list));
}

// --- analytics -----------------------------------------------------------------------------

function chart(series) {
  const w = 720, hgt = 140, n = Math.max(series.length, 1);
  const max = Math.max(1, ...series.map((s) => s.sent + s.failed));
  const bw = w / n;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("width", "100%");
  series.forEach((s, i) => {
    const sentH = (s.sent / max) * (hgt - 10), failH = (s.failed / max) * (hgt - 10);
    for (const [cls, y, height] of [["sent", hgt - sentH, sentH], ["failed", hgt - sentH - failH, failH]]) {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("class", cls);
      r.setAttribute("x", String(i * bw + 1));
      r.setAttribute("y", String(y));
      r.setAttribute("width", String(Math.max(bw - 2, 1)));
      r.setAttribute("height", String(height));
      const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
      t.textContent = `${s.hour}: ${s.sent} sent, ${s.failed} failed`;
      r.append(t);
      svg.append(r);
    }
  });
  return svg;
}

async function analyticsView() {
  const [summary, health] = await Promise.all([api("GET", "/v1/analytics/summary?hours=24"), api("GET", "/v1/health/status")]);
  const rows = Object.entries(summary.channels);
  const charts = h("div");
  for (const ch of ["push", "email", "sms", "webhook"]) {
    const r = await api("GET", `/v1/analytics/channels/${ch}?hours=24`);
    charts.append(h("h2", {}, `${ch}: sent and failed per hour`), chart(r.series.map((s) => ({ hour: when(s.hour), sent: s.sent, failed: s.failed }))));
  }
  return [
    h("section", {}, h("h2", {}, "Health: ", h("span", { class: health.status, id: "health" }, health.status)),
      (health.alerts ?? []).length ? h("ul", {}, health.alerts.map((a) => h("li", { class: a.severity }, `${a.message}: ${a.recommendation}`))) : h("p", { class: "muted" }, "No alerts.")),
    h("section", {}, h("h2", {}, "Last 24 hours"),
      h("table", { id: "analytics-channels" },
        h("thead", {}, h("tr", {}, ["channel", "sent", "failed", "delivery rate", "p95 latency (s)"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows.length ? [] : h("tr", {}, h("td", { class: "muted", colspan: 5 }, "No channel deliveries in the window.")),
          rows.map(([ch, f]) => h("tr", {}, h("td", {}, ch), h("td", {}, f.sent), h("td", {}, f.failed),
          h("td", {}, f.delivery_rate === null ? "—" : `${(100 * f.delivery_rate).toFixed(1)} %`),
          h("td", {}, f.latency?.p95_secs ?? "—"))))),
      h("pre", {}, JSON.stringify(summary.campaigns, null, 2))),
    h("section", {}, charts),
  ];
}

// --- routing -------------------------------------------------------------------------------

const VIEWS = {
  campaigns: campaignsView,
  audience: audienceView,
  templates: templatesView,
  webhooks: webhooksView,
  "dead-letters": deadLettersView,
  analytics: analyticsView,
};

async function route() {
  clearTimeout(timer);
  const loggedIn = !!sessionStorage.getItem(KEY);
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("logout").hidden = !loggedIn;
  if (!loggedIn) {
    $main.replaceChildren(loginView());
    return;
  }
  const [name, id] = (location.hash.slice(1) || "campaigns").split("/");
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === `#${name}`));
  const view = name === "campaigns" && id ? () => campaignView(decodeURIComponent(id)) : VIEWS[name] ?? campaignsView;
  try {
    const content = await view();
    fill($main, content);
  } catch (e) {
    $main.replaceChildren(h("section", {}, h("p", { class: "failing" }, e.message)));
  }
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
