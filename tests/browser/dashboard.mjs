// The dashboard in a real browser: headless Debian Chromium driven by playwright-core.
//
//   node tests/browser/dashboard.mjs <base url> <screenshot dir>
//
// Run by tests/dashboard.rs against a fresh `baton dev` (with BATON_SIGNING_KEY set, so the
// sign-in form is part of the flow). Signs in, sends an order from the page, watches its run
// complete on the runs page without a reload, opens its timeline, fails a run and replays it
// from the page, cancels a sleeping run, bulk-replays the failed runs, and looks at the
// functions; a full-page screenshot of every page goes to <screenshot dir>. Exits non-zero
// with the reason on the first thing that is not as expected, or on any script error or
// Content-Security-Policy violation in the page.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error("usage: node dashboard.mjs <base url> <screenshot dir>");
  process.exit(2);
}
const signingKey = process.env.BATON_SIGNING_KEY || "";
const executablePath = process.env.BATON_CHROMIUM || "/usr/bin/chromium";
mkdirSync(shots, { recursive: true });

const started = Date.now();
const log = (...args) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath,
  // Without these Chromium waits on the network this closed machine does not have.
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 30_000,
});

const problems = [];
let shotCount = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // The sign-in page is answered with status 401 on purpose; Chromium logs that.
    if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  // Cancel and bulk replay ask for confirmation.
  page.on("dialog", (d) => d.accept());

  const shot = async (name) => {
    shotCount++;
    const file = join(shots, `${String(shotCount).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    log("screenshot", file);
  };
  const nav = async (label) => {
    await Promise.all([page.waitForLoadState("load"), page.click(`header.top nav >> text=${label}`)]);
  };
  const sendEvent = async (data) => {
    await nav("Send event");
    await page.fill("input[name=name]", "demo/order.placed");
    await page.fill("textarea[name=data]", JSON.stringify(data));
    await Promise.all([page.waitForURL(/\/events\/[0-9A-Z]{26}\?notice=sent$/), page.click("#send-event button[type=submit]")]);
    check((await page.textContent(".notice")).includes("Event sent"), "no 'Event sent' notice");
    const row = page.locator("tr[data-run-id]", { has: page.locator("a", { hasText: /^process-order$/ }) });
    await row.waitFor();
    return await row.getAttribute("data-run-id");
  };

  // ---- sign in ----
  await page.goto(base + "/");
  if (signingKey) {
    check(await page.isVisible("form[action='/login']"), "expected the sign-in form");
    await page.fill("input[name=key]", "not-the-key");
    await page.click("form[action='/login'] button");
    await page.waitForSelector("p.error");
    await shot("sign-in");
    await page.fill("input[name=key]", signingKey);
    await Promise.all([page.waitForURL(base + "/"), page.click("form[action='/login'] button")]);
  }
  await page.waitForSelector("h1:has-text('Runs')");
  log("signed in; runs page open");

  // ---- send an order from the page; watch its run complete on the runs page ----
  await nav("Send event");
  await page.fill("input[name=name]", "demo/order.placed");
  await page.fill(
    "textarea[name=data]",
    JSON.stringify({ order_id: "browser-1", items: ["book", "pen"], flaky_payment: true, cool_down_s: 3 }, null, 2),
  );
  await shot("send-event");
  await Promise.all([page.waitForURL(/\/events\//), page.click("#send-event button[type=submit]")]);
  const okRow = page.locator("tr[data-run-id]", { has: page.locator("a", { hasText: /^process-order$/ }) });
  await okRow.waitFor();
  const okRun = await okRow.getAttribute("data-run-id");
  log("sent; run", okRun);
  await shot("event");

  await nav("Runs");
  await page.evaluate(() => (window.__sameDocument = true));
  const runRow = page.locator(`tr[data-run-id='${okRun}']`);
  const firstStatus = await runRow.getAttribute("data-status");
  check(firstStatus !== "Completed", `the run had already completed (${firstStatus}): nothing to watch`);
  log("runs page shows it", firstStatus);
  await page.waitForSelector(`tr[data-run-id='${okRun}'][data-status='Completed']`, { timeout: 30_000 });
  check(await page.evaluate(() => window.__sameDocument === true), "the page reloaded instead of updating live");
  check((await runRow.textContent()).includes("100%"), "the completed run's progress is not 100%");
  log("it completed, live");
  await shot("runs");

  // ---- its timeline ----
  await Promise.all([page.waitForURL(`**/runs/${okRun}`), runRow.locator(`a[href='/runs/${okRun}']`).click()]);
  for (const step of ["validate", "reserve-stock", "charge-card", "cool-down", "send-receipt"]) {
    const status = await page.getAttribute(`tr[data-step='${step}']`, "data-status");
    check(status === "Completed", `step ${step} is ${status}`);
  }
  const charge = await page.textContent("tr[data-step='charge-card']");
  check(/Completed\s*3\b/.test(charge.replace(/\s+/g, " ")), `charge-card should show 3 attempts: ${charge}`);
  check((await page.textContent("tr[data-step='cool-down']")).includes("Sleep"), "cool-down is not shown as a sleep");
  check((await page.textContent(".run-progress")).includes("100%"), "progress is not 100%");
  check((await page.textContent("main")).includes("receipt for browser-1"), "the output is missing");
  await page.click("tr[data-step='charge-card'] summary");
  log("timeline checked");
  await shot("run-timeline");

  // ---- restart it from its third step ----
  await Promise.all([
    page.waitForURL(/\/runs\/[0-9A-Z]{26}\?notice=replayed$/),
    page.click("tr[data-step='charge-card'] button:has-text('Replay from here')"),
  ]);
  const restartRun = new URL(page.url()).pathname.split("/").pop();
  check(restartRun !== okRun, "the restart is the same run");
  check(await page.isVisible(`a[href='/runs/${okRun}']`), "the restart does not link to the run it restarts");
  check((await page.textContent("#replay-from")) === "charge-card", "the restart does not say which step it started from");
  await page.waitForSelector(".title .badge.s-completed", { timeout: 30_000 });
  for (const step of ["validate", "reserve-stock", "charge-card", "send-receipt"]) {
    const status = await page.getAttribute(`tr[data-step='${step}']`, "data-status");
    check(status === "Completed", `restarted run: step ${step} is ${status}`);
  }
  log("restarted", okRun, "from charge-card as", restartRun);
  await shot("run-restarted");

  // ---- a failing order, and its replay from the page ----
  const badRun = await sendEvent({ order_id: "browser-2", items: [] });
  await page.waitForSelector(`tr[data-run-id='${badRun}'][data-status='Failed']`);
  await Promise.all([page.waitForURL(`**/runs/${badRun}`), page.click(`a[href='/runs/${badRun}']`)]);
  check((await page.textContent("main")).includes("order has no items"), "the failed run's error is missing");
  check((await page.getAttribute("tr[data-step='validate']", "data-status")) === "Failed", "validate did not fail");
  await shot("run-failed");
  await Promise.all([page.waitForURL(/\/runs\/[0-9A-Z]{26}\?notice=replayed$/), page.click(".title .actions button:has-text('Replay')")]);
  const replayRun = new URL(page.url()).pathname.split("/").pop();
  check(replayRun !== badRun, "the replay is the same run");
  check(await page.isVisible(`a[href='/runs/${badRun}']`), "the replay does not link to the run it replays");
  await page.waitForSelector("h1 + .badge.s-failed, .title .badge.s-failed");
  log("replayed", badRun, "as", replayRun, "which failed again (same event)");
  await shot("run-replayed");

  // ---- cancel a sleeping run ----
  const slowRun = await sendEvent({ order_id: "browser-3", items: ["x"], cool_down_s: 3600 });
  await Promise.all([page.waitForURL(`**/runs/${slowRun}`), page.click(`a[href='/runs/${slowRun}']`)]);
  await page.waitForSelector("tr[data-step='cool-down'][data-status='Sleeping']");
  await Promise.all([page.waitForURL(/notice=cancelled$/), page.click("button:has-text('Cancel run')")]);
  await page.waitForSelector(".title .badge.s-cancelled");
  log("cancelled", slowRun);
  await shot("run-cancelled");

  // ---- bulk replay of the failed runs ----
  await nav("Bulk replay");
  await page.selectOption("select[name=function_id]", "process-order");
  await page.selectOption("select[name=status]", "Failed");
  await page.fill("input[name=since]", "1h");
  await Promise.all([page.waitForLoadState("load"), page.click("#bulk-replay button[type=submit]")]);
  await page.waitForSelector("#replayed");
  const count = await page.getAttribute("#replayed", "data-count");
  check(count === "2", `bulk replay should replay the 2 failed runs, replayed ${count}`);
  log("bulk replay:", count, "runs");
  await shot("bulk-replay");

  // ---- functions ----
  await nav("Functions");
  const success = await page.textContent("tr[data-function='process-order'] [data-stat='success']");
  check(/%$/.test(success.trim()), `no success rate for process-order: ${success}`);
  check((await page.textContent("tr[data-function='process-order']")).includes("charge-card"), "steps missing");
  log("functions: process-order success", success.trim());
  await shot("functions");
  await Promise.all([page.waitForURL("**/functions/process-order"), page.click("a:has-text('Process an order')")]);
  await page.waitForSelector("[data-stat='p95']");
  await shot("function");

  // ---- filtered runs (the filter applies on change) ----
  await nav("Runs");
  await Promise.all([page.waitForURL(/status=Failed/), page.selectOption("select[name=status]", "Failed")]);
  const statuses = await page.$$eval("tr[data-run-id]", (rows) => rows.map((r) => r.dataset.status));
  check(statuses.length >= 2 && statuses.every((s) => s === "Failed"), `filtered rows: ${statuses}`);
  await shot("runs-failed");

  if (signingKey) {
    await Promise.all([page.waitForURL("**/login"), page.click("button:has-text('Sign out')")]);
    await page.goto(base + "/runs");
    check(await page.isVisible("form[action='/login']"), "still signed in after signing out");
  }

  check(problems.length === 0, `the page reported problems:\n  ${problems.join("\n  ")}`);
  log(`ok: ${shotCount} screenshots in ${shots}`);
} catch (e) {
  console.error(`FAILED after ${((Date.now() - started) / 1000).toFixed(1)}s: ${e.stack || e}`);
  if (problems.length) console.error(`page problems:\n  ${problems.join("\n  ")}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
