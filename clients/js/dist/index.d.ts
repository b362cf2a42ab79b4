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
export type BulkScope = {
    ids: string[];
} | {
    before: string;
} | {
    all: true;
};
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
export declare class HeraldError extends Error {
    readonly status: number;
    readonly code: string;
    constructor(status: number, code: string, message: string);
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
export declare const DEFAULT_BACKOFF: Backoff;
/** The delay before reconnect attempt `attempt` (0 for the first). */
export declare function backoffDelay(attempt: number, backoff: Backoff, random?: () => number): number;
/** The part of a WebSocket this client uses (the browser's, or `ws`'s on Node). */
export interface SocketLike {
    readonly readyState: number;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
    read: {
        id: string;
    };
    /** An item was dismissed on another device (or through this client). */
    dismiss: {
        id: string;
    };
    /** Everything was read on another device (or through this client). */
    read_all: Record<string, never>;
    /** The sender took the item back (`DELETE /v1/campaigns/{id}/notifications`): remove it. */
    retracted: {
        id: string;
    };
    /** The sender changed the item's content (`PATCH /v1/campaigns/{id}/content`): the item as
     *  it is now (same id and cursor; its read, seen and archived state are the user's). */
    updated: InboxItem;
    /** Items changed state on another device (or through this client): the items `ids`, or
     *  everything older than the cursor `before`, or (`all`) everything. */
    marked: {
        action: InboxAction;
        ids: string[];
        before: string | null;
        all: boolean;
    };
    /** The feed is live (also after each reconnect). */
    open: {
        resumedFrom: string | null;
    };
    /** The feed closed; unless `disconnect()` closed it, it reconnects after `retryInMs`. */
    close: {
        code: number;
        reason: string;
        retryInMs: number | null;
    };
    /** A request or frame failed; the feed carries on (reconnecting if it must). */
    error: {
        error: unknown;
    };
}
type Handler<T> = (payload: T) => void;
/** One user's inbox. */
export declare class InboxClient {
    private readonly options;
    private readonly baseUrl;
    private readonly fetchFn;
    private readonly socketFactory;
    private readonly backoff;
    private readonly random;
    private readonly handlers;
    private socket;
    private wanted;
    private attempt;
    private timer;
    private since;
    private seen;
    private seenSet;
    constructor(options: InboxClientOptions);
    /** Subscribes to an event; returns the function that unsubscribes. */
    on<K extends keyof InboxEvents>(event: K, handler: Handler<InboxEvents[K]>): () => void;
    private emit;
    private token;
    private request;
    /** A page of the inbox, newest first: `cursor` (a `next_cursor`) for older pages; `status`
     *  (`all`, `unread`, `unseen`) and `archived` (`exclude`, `include`, `only`) filter it. */
    list(params?: {
        limit?: number;
        cursor?: string | null;
        unreadOnly?: boolean;
        status?: "all" | "unread" | "unseen";
        archived?: "exclude" | "include" | "only";
    }): Promise<InboxPage>;
    /** Every item, page after page (`pageSize` at a time). */
    all(pageSize?: number): AsyncGenerator<InboxItem>;
    unreadCount(): Promise<number>;
    /** The badge counts: unread and unseen items, archived ones left out. */
    counts(): Promise<{
        unread_count: number;
        unseen_count: number;
    }>;
    /** Applies `action` to the items of `scope` (the user's other devices are told); answers
     *  how many items it found or changed, and the ids the user has no item for. */
    bulk(action: InboxAction, scope: BulkScope): Promise<{
        updated: number;
        not_found: string[];
    }>;
    /** Marks everything seen (opening the feed, say); answers how many items were unseen. */
    seenAll(): Promise<number>;
    archive(ids: string[]): Promise<void>;
    unarchive(ids: string[]): Promise<void>;
    /** Marks an item read (the user's other devices are told). */
    read(id: string): Promise<void>;
    /** Dismisses an item: gone from every page and count. */
    dismiss(id: string): Promise<void>;
    /** Marks everything read; answers how many items were unread. */
    readAll(): Promise<number>;
    /** The cursor the live feed resumes after: the newest item delivered (or listed first). */
    get resumeCursor(): string | null;
    /** Starts the live feed, resuming after `since` (else after the newest item this client
     *  delivered or listed; else from now). It stays up until `disconnect()`. */
    connect(params?: {
        since?: string | null;
    }): void;
    /** Stops the live feed (no reconnect). */
    disconnect(): void;
    private open;
    private retry;
    private frame;
}
export {};
