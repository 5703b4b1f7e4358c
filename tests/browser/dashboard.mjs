// Drives the dashboard in headless Chromium: node dashboard.mjs BASE_URL SCREENSHOT_PATH PROMPT
// Waits for the loaded model, the GPU/host memory bar, the recorded request (whose row it clicks) and the logs, then
// saves a full-page screenshot. Prints one JSON line with what it saw; exits non-zero with the reason otherwise.
import { chromium } from "playwright-core";

const [base, shot, prompt] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(base + "/dashboard");
  await page.waitForSelector('#models tbody tr[data-model="ai/tiny:latest"]', { timeout: 10000 });
  await page.waitForSelector("#devices .device .bar .ours", { timeout: 10000 });
  const row = page.locator("#requests tbody tr.clickable").first();
  await row.waitFor({ timeout: 10000 });
  await row.click();
  await page.waitForSelector("#details pre", { timeout: 5000 });
  const details = await page.locator("#details").innerText();
  await page.waitForFunction(() => document.querySelector("#logs").textContent.includes("engine ready"), null,
    { timeout: 10000 });
  const model = await page.locator('#models tbody tr[data-model="ai/tiny:latest"]').innerText();
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ model, details, promptShown: details.includes(prompt), errors }));
} finally {
  await browser.close();
}
