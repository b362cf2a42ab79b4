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

/** One item of an inbox, personal or broadcast (`GET /v1/inbox`, live `notification` frames). */
export interface InboxItem {
  id: string;
  /** This item's position: `list({cursor})` pages on after it, the live feed resumes after it. */
  cursor: string;
  kind: "personal" | "broadcast";
  title: string;
  body: string;
  category: string | null;
  data: Record<string, unknown>;
  created_at: string;
  read: boolean;
  /** Read, or seen in a feed (`read` implies `seen`). */
  seen: boolean;
  /** Archived: out of the default view and the counts (`list({archived})` shows it). */
  archived: boolean;
  read_at: string | null;
  seen_at: string | null;
  archived_at: string | null;
}

/** What a bulk action does. `read` marks seen too. */
export type InboxAction = "seen" | "read" | "archive" | "unarchive";

/** Which items a bulk action covers: these ids (1 to 100), everything strictly older than a
 *  cursor, or everything. */
export type BulkScope = { ids: string[] } | { before: string } | { all: true };

/** One page of an inbox, newest first. */
export interface InboxPage {
  items: InboxItem[];
  /** Pass as `cursor` for the next (older) page; `null` on the last page. */
  next_cursor: string | null;
  /** Unread items, archived ones left out, over the whole inbox. */
  unread_count: number;
  /** Unseen items (neither seen nor read), counted as `unread_count` is. */
  unseen_count: number;
}

/** A 4xx or 5xx answer of the inbox API (its `{"error": {"code", "message"}}` body). */
export class HeraldError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "HeraldError";
  }
}

/** How the live feed waits before reconnecting: `initialMs × factor^attempt`, at most
 *  `maxMs`, of which up to a `jitter` share is taken off at random (so clients dropped at
 *  once do not come back at once). */
export interface Backoff {
  initialMs: number;
  maxMs: number;
  factor: number;
  /** 0 (none) to 1 (full jitter: anywhere from 0 to the delay). */
  jitter: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 30_000, factor: 2, jitter: 0.5 };

/** The delay before reconnect attempt `attempt` (0 for the first). */
export function backoffDelay(attempt: number, backoff: Backoff, random: () => number = Math.random): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * Math.pow(backoff.factor, Math.max(0, attempt)));
  const jitter = Math.min(1, Math.max(0, backoff.jitter));
  return Math.round(base * (1 - jitter * random()));
}

/** The part of a WebSocket this client uses (the browser's, or `ws`'s on Node). */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = new (url: string) => SocketLike;

export interface InboxClientOptions {
  /** Where Herald's inbox API is, such as `https://herald.example.com`. */
  baseUrl: string;
  /** The user's inbox token, or a function asked for it before every request and connection
   *  (to hand out a refreshed one). */
  token: string | (() => string | Promise<string>);
  /** Defaults to the global `fetch`. */
  fetch?: typeof fetch;
  /** Defaults to the global `WebSocket`. */
  WebSocket?: SocketFactory;
  backoff?: Partial<Backoff>;
  /** For tests: the random source of the jitter. */
  random?: () => number;
}

/** What the live feed reports. */
export interface InboxEvents {
  /** A new item (a personal notification, or a broadcast that became active for this user),
   *  each delivered once, oldest first after a resume. */
  notification: InboxItem;
  /** An item was read on another device (or through this client). */
  read: { id: string };
  /** An item was dismissed on another device (or through this client). */
  dismiss: { id: string };
  /** Everything was read on another device (or through this client). */
  read_all: Record<string, never>;
  /** The sender took the item back (`DELETE /v1/campaigns/{id}/notifications`): remove it. */
  retracted: { id: string };
  /** The sender changed the item's content (`PATCH /v1/campaigns/{id}/content`): the item as
   *  it is now (same id and cursor; its read, seen and archived state are the user's). */
  updated: InboxItem;
  /** Items changed state on another device (or through this client): the items `ids`, or
   *  everything older than the cursor `before`, or (`all`) everything. */
  marked: { action: InboxAction; ids: string[]; before: string | null; all: boolean };
  /** The feed is live (also after each reconnect). */
  open: { resumedFrom: string | null };
  /** The feed closed; unless `disconnect()` closed it, it reconnects after `retryInMs`. */
  close: { code: number; reason: string; retryInMs: number | null };
  /** A request or frame failed; the feed carries on (reconnecting if it must). */
  error: { error: unknown };
}

type Handler<T> = (payload: T) => void;

/** How many delivered item ids are kept to drop a duplicate delivery. */
const SEEN_IDS = 1000;

/** One user's inbox. */
export class InboxClient {
  private readonly baseUrl: string;
  private readonly fetchFn: typeof fetch;
  private readonly socketFactory: SocketFactory | undefined;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private readonly handlers: { [K in keyof InboxEvents]?: Set<Handler<InboxEvents[K]>> } = {};
  private socket: SocketLike | null = null;
  private wanted = false;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private since: string | null = null;
  private seen: string[] = [];
  private seenSet = new Set<string>();

  constructor(private readonly options: InboxClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    const f = options.fetch ?? globalThis.fetch;
    if (!f) throw new Error("no fetch: pass `fetch` in the options");
    this.fetchFn = f.bind(globalThis);
    this.socketFactory = options.WebSocket ?? (globalThis as { WebSocket?: SocketFactory }).WebSocket;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.random = options.random ?? Math.random;
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof InboxEvents>(event: K, handler: Handler<InboxEvents[K]>): () => void {
    let set = this.handlers[event] as Set<Handler<InboxEvents[K]>> | undefined;
    if (!set) {
      set = new Set();
      (this.handlers as Record<string, unknown>)[event] = set;
    }
    set.add(handler);
    return () => set!.delete(handler);
  }

  private emit<K extends keyof InboxEvents>(event: K, payload: InboxEvents[K]): void {
    const set = this.handlers[event] as Set<Handler<InboxEvents[K]>> | undefined;
    set?.forEach((h) => {
      try {
        h(payload);
      } catch (error) {
        if (event !== "error") this.emit("error", { error });
      }
    });
  }

  private async token(): Promise<string> {
    const t = this.options.token;
    return typeof t === "function" ? await t() : t;
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T | null> {
    const headers: Record<string, string> = { Authorization: `Bearer ${await this.token()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await this.fetchFn(`${this.baseUrl}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!resp.ok) {
      let code = "http_error";
      let message = `${method} ${path}: HTTP ${resp.status}`;
      try {
        const body = (await resp.json()) as { error?: { code?: string; message?: string } };
        code = body.error?.code ?? code;
        message = body.error?.message ?? message;
      } catch {
        // Not the error body: keep the status line.
      }
      throw new HeraldError(resp.status, code, message);
    }
    return resp.status === 204 ? null : ((await resp.json()) as T);
  }

  /** A page of the inbox, newest first: `cursor` (a `next_cursor`) for older pages; `status`
   *  (`all`, `unread`, `unseen`) and `archived` (`exclude`, `include`, `only`) filter it. */
  async list(
    params: {
      limit?: number;
      cursor?: string | null;
      unreadOnly?: boolean;
      status?: "all" | "unread" | "unseen";
      archived?: "exclude" | "include" | "only";
    } = {},
  ): Promise<InboxPage> {
    const q = new URLSearchParams();
    if (params.limit !== undefined) q.set("limit", String(params.limit));
    if (params.cursor) q.set("cursor", params.cursor);
    if (params.unreadOnly) q.set("status", "unread");
    if (params.status) q.set("status", params.status);
    if (params.archived) q.set("archived", params.archived);
    const qs = q.toString();
    const page = (await this.request<InboxPage>("GET", `/v1/inbox${qs ? `?${qs}` : ""}`))!;
    // The newest item known is where a live feed started later resumes.
    if (!params.cursor && page.items.length > 0 && this.since === null) {
      this.since = page.items[0].cursor;
    }
    return page;
  }

  /** Every item, page after page (`pageSize` at a time). */
  async *all(pageSize = 50): AsyncGenerator<InboxItem> {
    let cursor: string | null = null;
    do {
      const page: InboxPage = await this.list({ limit: pageSize, cursor });
      yield* page.items;
      cursor = page.next_cursor;
    } while (cursor);
  }

  async unreadCount(): Promise<number> {
    return (await this.counts()).unread_count;
  }

  /** The badge counts: unread and unseen items, archived ones left out. */
  async counts(): Promise<{ unread_count: number; unseen_count: number }> {
    return (await this.request<{ unread_count: number; unseen_count: number }>("GET", "/v1/inbox/unread_count"))!;
  }

  /** Applies `action` to the items of `scope` (the user's other devices are told); answers
   *  how many items it found or changed, and the ids the user has no item for. */
  async bulk(action: InboxAction, scope: BulkScope): Promise<{ updated: number; not_found: string[] }> {
    const r = (await this.request<{ updated: number; not_found?: string[] }>("POST", "/v1/inbox/bulk", {
      action,
      ...scope,
    }))!;
    return { updated: r.updated, not_found: r.not_found ?? [] };
  }

  /** Marks everything seen (opening the feed, say); answers how many items were unseen. */
  async seenAll(): Promise<number> {
    return (await this.bulk("seen", { all: true })).updated;
  }

  async archive(ids: string[]): Promise<void> {
    await this.bulk("archive", { ids });
  }

  async unarchive(ids: string[]): Promise<void> {
    await this.bulk("unarchive", { ids });
  }

  /** Marks an item read (the user's other devices are told). */
  async read(id: string): Promise<void> {
    await this.request("POST", `/v1/inbox/${encodeURIComponent(id)}/read`);
  }

  /** Dismisses an item: gone from every page and count. */
  async dismiss(id: string): Promise<void> {
    await this.request("POST", `/v1/inbox/${encodeURIComponent(id)}/dismiss`);
  }

  /** Marks everything read; answers how many items were unread. */
  async readAll(): Promise<number> {
    return (await this.request<{ marked_read: number }>("POST", "/v1/inbox/read_all"))!.marked_read;
  }

  /** The cursor the live feed resumes after: the newest item delivered (or listed first). */
  get resumeCursor(): string | null {
    return this.since;
  }

  /** Starts the live feed, resuming after `since` (else after the newest item this client
   *  delivered or listed; else from now). It stays up until `disconnect()`. */
  connect(params: { since?: string | null } = {}): void {
    if (params.since !== undefined) this.since = params.since;
    this.wanted = true;
    if (!this.socket && !this.timer) void this.open();
  }

  /** Stops the live feed (no reconnect). */
  disconnect(): void {
    this.wanted = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const s = this.socket;
    this.socket = null;
    if (s) {
      s.close(1000, "client disconnect");
      this.emit("close", { code: 1000, reason: "client disconnect", retryInMs: null });
    }
  }

  private async open(): Promise<void> {
    if (!this.socketFactory) throw new Error("no WebSocket: pass `WebSocket` in the options");
    let token: string;
    try {
      token = await this.token();
    } catch (error) {
      this.emit("error", { error });
      this.retry(4000, "no token");
      return;
    }
    if (!this.wanted) return;
    const q = new URLSearchParams({ token });
    const resumedFrom = this.since;
    if (resumedFrom) q.set("since", resumedFrom);
    const url = `${this.baseUrl.replace(/^http/, "ws")}/v1/inbox/live?${q}`;
    const socket = new this.socketFactory(url);
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.attempt = 0;
      this.emit("open", { resumedFrom });
    };
    socket.onmessage = (ev) => {
      if (this.socket !== socket) return;
      this.frame(ev.data);
    };
    socket.onerror = (error) => {
      if (this.socket === socket) this.emit("error", { error });
    };
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.retry(ev.code, ev.reason);
    };
  }

  private retry(code: number, reason: string): void {
    if (!this.wanted) {
      this.emit("close", { code, reason, retryInMs: null });
      return;
    }
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.emit("close", { code, reason, retryInMs: delay });
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.wanted) void this.open();
    }, delay);
  }

  private frame(data: unknown): void {
    let msg: {
      type?: string;
      item?: InboxItem;
      id?: string;
      action?: InboxAction;
      ids?: string[];
      before?: string;
      all?: boolean;
    };
    try {
      msg = JSON.parse(typeof data === "string" ? data : String(data));
    } catch (error) {
      this.emit("error", { error });
      return;
    }
    switch (msg.type) {
      case "notification": {
        const item = msg.item;
        if (!item) return;
        // The resume point moves with every item delivered, duplicates included.
        this.since = item.cursor;
        if (this.seenSet.has(item.id)) return;
        this.seenSet.add(item.id);
        this.seen.push(item.id);
        if (this.seen.length > SEEN_IDS) this.seenSet.delete(this.seen.shift()!);
        this.emit("notification", item);
        return;
      }
      case "updated":
        if (msg.item) this.emit("updated", msg.item);
        return;
      case "read":
      case "dismiss":
      case "retracted":
        if (msg.id) this.emit(msg.type, { id: msg.id });
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
