// What the browser tests share: a `herald serve` of their own and Debian's chromium, headless
// (CHROMIUM, else /usr/bin/chromium), started before the file's tests and stopped after; and
// the artifacts/ folder where they put their screenshots.
import { before, after } from "node:test";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { startHerald } from "../test/herald.mjs";

export const ARTIFACTS = new URL("../artifacts/", import.meta.url).pathname;

/** `{herald, browser}`, filled in before the tests run. */
export function setUp() {
  const env = {};
  before(async () => {
    env.herald = await startHerald();
    env.browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
    });
    mkdirSync(ARTIFACTS, { recursive: true });
  });
  after(async () => {
    await env.browser?.close();
    await env.herald?.stop();
  });
  return env;
}
