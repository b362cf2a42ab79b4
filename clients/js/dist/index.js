/**
 * Herald's inbox client, for browsers and Node: one user's inbox through the inbox API (pages
 * with a cursor and a state filter, the unread and unseen counts, read / dismiss / read-all,
 * bulk seen / read / archive / unarchive) and its live feed over a
 * WebSocket, which reconnects with exponential backoff and jitter and resumes with `since`
 * (the cursor of the newest item it delivered), so nothing is missed and nothing is delivered
 * twice across a reconnect.
 *
 * No framework and no dependency: `fetch` and a `WebSocket` constructor (the browser's own,
 * or one passed in, such as the `ws` package's on Node before 22).
 */
/** A 4xx or 5xx answer of the inbox API (its `{"error": {"code", "message"}}` body). */
export class HeraldError extends Error {
    constructor(status, code, message) {
        super(message);
        this.status = status;
        this.code = code;
        this.name = "HeraldError";
    }
}
export const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30000, factor: 2, jitter: 0.5 };
/** The delay before reconnect attempt `attempt` (0 for the first). */
export function backoffDelay(attempt, backoff, random = Math.random) {
    const base = Math.min(backoff.maxMs, backoff.initialMs * Math.pow(backoff.factor, Math.max(0, attempt)));
    const jitter = Math.min(1, Math.max(0, backoff.jitter));
    return Math.round(base * (1 - jitter * random()));
}
/** How many delivered item ids are kept to drop a duplicate delivery. */
const SEEN_IDS = 1000;
/** One user's inbox. */
export class InboxClient {
    constructor(options) {
        this.options = options;
        this.handlers = {};
        this.socket = null;
        this.wanted = false;
        this.attempt = 0;
        this.timer = null;
        this.since = null;
        this.seen = [];
        this.seenSet = new Set();
        this.baseUrl = options.baseUrl.replace(/\/+$/, "");
        const f = options.fetch ?? globalThis.fetch;
        if (!f)
            throw new Error("no fetch: pass `fetch` in the options");
        this.fetchFn = f.bind(globalThis);
        this.socketFactory = options.WebSocket ?? globalThis.WebSocket;
        this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
        this.random = options.random ?? Math.random;
    }
    /** Subscribes to an event; returns the function that unsubscribes. */
    on(event, handler) {
        let set = this.handlers[event];
        if (!set) {
            set = new Set();
            this.handlers[event] = set;
        }
        set.add(handler);
        return () => set.delete(handler);
    }
    emit(event, payload) {
        const set = this.handlers[event];
        set?.forEach((h) => {
            try {
                h(payload);
            }
            catch (error) {
                if (event !== "error")
                    this.emit("error", { error });
            }
        });
    }
    async token() {
        const t = this.options.token;
        return typeof t === "function" ? await t() : t;
    }
    async request(method, path, body) {
        const headers = { Authorization: `Bearer ${await this.token()}` };
        if (body !== undefined)
            headers["Content-Type"] = "application/json";
        const resp = await this.fetchFn(`${this.baseUrl}${path}`, {
            method,
            headers,
            body: body === undefined ? undefined : JSON.stringify(body),
        });
        if (!resp.ok) {
            let code = "http_error";
            let message = `${method} ${path}: HTTP ${resp.status}`;
            try {
                const body = (await resp.json());
                code = body.error?.code ?? code;
                message = body.error?.message ?? message;
            }
            catch {
                // Not the error body: keep the status line.
            }
            throw new HeraldError(resp.status, code, message);
        }
        return resp.status === 204 ? null : (await resp.json());
    }
    /** A page of the inbox, newest first: `cursor` (a `next_cursor`) for older pages; `status`
     *  (`all`, `unread`, `unseen`) and `archived` (`exclude`, `include`, `only`) filter it. */
    async list(params = {}) {
        const q = new URLSearchParams();
        if (params.limit !== undefined)
            q.set("limit", String(params.limit));
        if (params.cursor)
            q.set("cursor", params.cursor);
        if (params.unreadOnly)
            q.set("status", "unread");
        if (params.status)
            q.set("status", params.status);
        if (params.archived)
            q.set("archived", params.archived);
        const qs = q.toString();
        const page = (await this.request("GET", `/v1/inbox${qs ? `?${qs}` : ""}`));
        // The newest item known is where a live feed started later resumes.
        if (!params.cursor && page.items.length > 0 && this.since === null) {
            this.since = page.items[0].cursor;
        }
        return page;
    }
    /** Every item, page after page (`pageSize` at a time). */
    async *all(pageSize = 50) {
        let cursor = null;
        do {
            const page = await this.list({ limit: pageSize, cursor });
            yield* page.items;
            cursor = page.next_cursor;
        } while (cursor);
    }
    async unreadCount() {
        return (await this.counts()).unread_count;
    }
    /** The badge counts: unread and unseen items, archived ones left out. */
    async counts() {
        return (await this.request("GET", "/v1/inbox/unread_count"));
    }
    /** Applies `action` to the items of `scope` (the user's other devices are told); answers
     *  how many items it found or changed, and the ids the user has no item for. */
    async bulk(action, scope) {
        const r = (await this.request("POST", "/v1/inbox/bulk", {
            action,
            ...scope,
        }));
        return { updated: r.updated, not_found: r.not_found ?? [] };
    }
    /** Marks everything seen (opening the feed, say); answers how many items were unseen. */
    async seenAll() {
        return (await this.bulk("seen", { all: true })).updated;
    }
    async archive(ids) {
        await this.bulk("archive", { ids });
    }
    async unarchive(ids) {
        await this.bulk("unarchive", { ids });
    }
    /** Marks an item read (the user's other devices are told). */
    async read(id) {
        await this.request("POST", `/v1/inbox/${encodeURIComponent(id)}/read`);
    }
    /** Dismisses an item: gone from every page and count. */
    async dismiss(id) {
        await this.request("POST", `/v1/inbox/${encodeURIComponent(id)}/dismiss`);
    }
    /** Marks everything read; answers how many items were unread. */
    async readAll() {
        return (await this.request("POST", "/v1/inbox/read_all")).marked_read;
    }
    /** The cursor the live feed resumes after: the newest item delivered (or listed first). */
    get resumeCursor() {
        return this.since;
    }
    /** Starts the live feed, resuming after `since` (else after the newest item this client
     *  delivered or listed; else from now). It stays up until `disconnect()`. */
    connect(params = {}) {
        if (params.since !== undefined)
            this.since = params.since;
        this.wanted = true;
        if (!this.socket && !this.timer)
            void this.open();
    }
    /** Stops the live feed (no reconnect). */
    disconnect() {
        this.wanted = false;
        if (this.timer)
            clearTimeout(this.timer);
        this.timer = null;
        const s = this.socket;
        this.socket = null;
        if (s) {
            s.close(1000, "client disconnect");
            this.emit("close", { code: 1000, reason: "client disconnect", retryInMs: null });
        }
    }
    async open() {
        if (!this.socketFactory)
            throw new Error("no WebSocket: pass `WebSocket` in the options");
        let token;
        try {
            token = await this.token();
        }
        catch (error) {
            this.emit("error", { error });
            this.retry(4000, "no token");
            return;
        }
        if (!this.wanted)
            return;
        const q = new URLSearchParams({ token });
        const resumedFrom = this.since;
        if (resumedFrom)
            q.set("since", resumedFrom);
        const url = `${this.baseUrl.replace(/^http/, "ws")}/v1/inbox/live?${q}`;
        const socket = new this.socketFactory(url);
        this.socket = socket;
        socket.onopen = () => {
            if (this.socket !== socket)
                return;
            this.attempt = 0;
            this.emit("open", { resumedFrom });
        };
        socket.onmessage = (ev) => {
            if (this.socket !== socket)
                return;
            this.frame(ev.data);
        };
        socket.onerror = (error) => {
            if (this.socket === socket)
                this.emit("error", { error });
        };
        socket.onclose = (ev) => {
            if (this.socket !== socket)
                return;
            this.socket = null;
            this.retry(ev.code, ev.reason);
        };
    }
    retry(code, reason) {
        if (!this.wanted) {
            this.emit("close", { code, reason, retryInMs: null });
            return;
        }
        const delay = backoffDelay(this.attempt, this.backoff, this.random);
        this.attempt += 1;
        this.emit("close", { code, reason, retryInMs: delay });
        this.timer = setTimeout(() => {
            this.timer = null;
            if (this.wanted)
                void this.open();
        }, delay);
    }
    frame(data) {
        let msg;
        try {
            msg = JSON.parse(typeof data === "string" ? data : String(data));
        }
        catch (error) {
            this.emit("error", { error });
            return;
        }
        switch (msg.type) {
            case "notification": {
                const item = msg.item;
                if (!item)
                    return;
                // The resume point moves with every item delivered, duplicates included.
                this.since = item.cursor;
                if (this.seenSet.has(item.id))
                    return;
                this.seenSet.add(item.id);
                this.seen.push(item.id);
                if (this.seen.length > SEEN_IDS)
                    this.seenSet.delete(this.seen.shift());
                this.emit("notification", item);
                return;
            }
            case "updated":
                if (msg.item)
                    this.emit("updated", msg.item);
                return;
            case "read":
            case "dismiss":
            case "retracted":
                if (msg.id)
                    this.emit(msg.type, { id: msg.id });
                return;
            case "read_all":
                this.emit("read_all", {});
                return;
            case "marked":
                if (msg.action) {
                    this.emit("marked", {
                        action: msg.action,
                        ids: msg.ids ?? [],
                        before: msg.before ?? null,
                        all: msg.all ?? false,
                    });
                }
                return;
            default:
                // A frame type of a later server: ignored.
                return;
        }
    }
}
