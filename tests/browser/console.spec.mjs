// The admin console in a real browser: Debian's headless Chromium driven by playwright-core.
// Run by tests/console_browser.rs, which starts the processor, the console and an HTTPS test
// receiver and passes them in the JSON file named by CONSOLE_TEST_CONFIG:
//   { "base": "http://127.0.0.1:PORT", "username", "password", "ok_url", "flaky_url",
//     "artefacts": "DIR", "result": "FILE" }
// The story: log in, create a subscription (its generated secret shown once), send a test
// webhook and see it delivered, point the subscription at an endpoint that fails four times,
// send another and see it fail into the failed list, preview the replay, confirm it, watch the
// progress, and see the delivery succeed. Screenshots of every step go to the artefacts
// directory; the secret and delivery ids go to the result file for the Rust side to check
// against what the receiver got. Any failed expectation exits non-zero with the reason.

import { chromium } from "playwright-core";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const cfg = JSON.parse(readFileSync(process.env.CONSOLE_TEST_CONFIG, "utf8"));
mkdirSync(cfg.artefacts, { recursive: true });
const result = {};
const log = (...a) => console.log("[console.spec]", ...a);

function expect(cond, what) {
  if (!cond) throw new Error("expectation failed: " + what);
}

/** Reloads `page` until `probe()` is truthy or `seconds` pass. */
async function until(page, seconds, what, probe) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds}s waiting for ${what}`);
    await page.waitForTimeout(1000);
    await page.reload();
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in CI containers cannot use Chromium's sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const shot = async (page, name) => {
  const path = join(cfg.artefacts, name + ".png");
  await page.screenshot({ path, fullPage: true });
  log("screenshot", path);
};

try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // The refused login (401) and the invalid form (422) answer with those statuses on purpose.
  const intended = /status of (401|422) /;
  page.on("console", (m) => {
    if (m.type() === "error" && !intended.test(m.text())) errors.push(m.text());
  });
  page.on("dialog", (d) => d.accept());

  // 1. Every page needs a login.
  await page.goto(cfg.base + "/subscriptions");
  expect(page.url().endsWith("/login"), "redirected to the login page, got " + page.url());
  await page.fill("input[name=username]", cfg.username);
  await page.fill("input[name=password]", "not the password");
  await page.click("button[type=submit]");
  expect((await page.textContent("main")).includes("wrong user name or password"), "a wrong password is refused");
  await shot(page, "01-login-refused");
  await page.fill("input[name=username]", cfg.username);
  await page.fill("input[name=password]", cfg.password);
  await page.click("button[type=submit]");
  expect(new URL(page.url()).pathname === "/subscriptions", "logged in, at " + page.url());

  // 2. Create a subscription; the generated secret is shown once.
  await page.click("text=New subscription");
  await page.fill("input[name=id]", "partner-web");
  await page.fill("input[name=url]", "ftp://wrong");
  await page.click("button:has-text('Create subscription')");
  const urlError = await page.textContent("#error-url");
  expect(urlError && urlError.includes("scheme"), "the URL error is shown beside the field: " + urlError);
  await shot(page, "02-invalid-url");
  await page.fill("input[name=url]", cfg.ok_url);
  await page.click("button:has-text('Create subscription')");
  const secret = (await page.textContent("#secret")).trim();
  expect(secret.startsWith("whsec_"), "a generated secret is shown: " + secret);
  result.secret = secret;
  await shot(page, "03-created-secret-once");

  // 3. A test webhook, delivered.
  await page.click("main a[href='/subscriptions/partner-web']");
  expect(!(await page.content()).includes(secret), "the subscription page never shows the secret");
  await page.click("#send-test");
  const okId = (await page.textContent("#notice a")).trim();
  expect(okId.startsWith("dlv_"), "the notice names the delivery: " + okId);
  result.ok_delivery = okId;
  await until(page, 60, "the test webhook delivered", async () =>
    (await page.locator(`#deliveries tr[data-outcome=success]:has(a:text("${okId}"))`).count()) > 0);
  await shot(page, "04-test-webhook-delivered");

  // 4. Point it at an endpoint that fails four times, and send another.
  await page.click("details summary");
  await page.fill(".subscription-form input[name=url]", cfg.flaky_url);
  await page.click("button:has-text('Save changes')");
  expect((await page.textContent("#notice")).includes("Saved"), "saved");
  await page.click("#send-test");
  const failId = (await page.textContent("#notice a")).trim();
  result.failed_delivery = failId;
  log("waiting for", failId, "to exhaust its four attempts (about 31 s)");
  await page.goto(cfg.base + "/failed?subscription=partner-web");
  await until(page, 90, "the delivery in the failed list", async () =>
    (await page.locator(`#failed a:text("${failId}")`).count()) > 0);
  await shot(page, "05-failed");

  // 5. Preview, confirm, replay, progress.
  await page.click("#preview");
  expect((await page.textContent("#count-replay")).trim() === "1", "the preview would replay 1");
  await shot(page, "06-replay-preview");
  await page.check("#confirm");
  await page.click("#replay");
  await page.waitForURL(/\/replay\/job_/);
  await page.waitForFunction(() => document.getElementById("job").getAttribute("data-state") !== "running", null, { timeout: 60000 });
  const state = (await page.textContent("#job-state")).trim();
  expect(state === "done", "the replay job is done: " + state + " " + (await page.textContent("#job-detail")));
  expect((await page.textContent("#job-produced")).trim() === "1", "one re-injected");
  await shot(page, "07-replay-done");

  // 6. Delivered after the replay.
  await page.goto(cfg.base + "/deliveries/" + failId);
  await until(page, 60, "the replayed delivery to succeed", async () =>
    (await page.locator("#attempts tr[data-outcome=success]").count()) > 0);
  const attempts = await page.locator("#attempts tbody tr").count();
  expect(attempts === 5, "four failed attempts and the replayed success: " + attempts);
  await shot(page, "08-delivery-attempts");
  await page.goto(cfg.base + "/subscriptions/partner-web");
  await until(page, 30, "both deliveries listed", async () =>
    (await page.locator("#deliveries tr[data-outcome=success]").count()) === 2);
  await shot(page, "09-subscription");
  await page.goto(cfg.base + "/subscriptions");
  await shot(page, "10-subscriptions");

  expect(errors.length === 0, "no script or CSP errors in the pages: " + errors.join(" | "));
  writeFileSync(cfg.result, JSON.stringify(result));
  log("ok");
} catch (e) {
  console.error("[console.spec] FAILED:", e && e.stack ? e.stack : e);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) await shot(pages[0], "99-failure");
  } catch (_) { /* the failure is reported above */ }
  process.exitCode = 1;
} finally {
  await browser.close();
}
