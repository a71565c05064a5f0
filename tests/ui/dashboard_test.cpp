// The dashboard at /ui in a real headless Chromium, against kvmid and an
// embedded kvmi-sim fleet. One kvmid and one browser serve every case of
// this binary (started by the first case, stopped by the last or, when a
// filter skips it, at the end of the run); the cases run in file order.
#include "tests/support/kvmid_process.hpp"
#include "tests/ui/cdp_page.hpp"
#include "tests/ui/cut_connections.hpp"

#include "server/control/encoding.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <memory>
#include <set>

using namespace kvmid;
using namespace kvmid::test;
using namespace std::chrono_literals;

namespace {

// The issue asks for an alert on the page within 2 s of the event. The
// check waits far longer, so a loaded machine cannot fail it; the time it
// took is printed.
constexpr auto alert_deadline = 20s;
constexpr size_t stream_queue = 8;

struct dashboard {
  kvmid_process kvmid{[] {
    kvmid_process_options o;
    o.vms = 3;
    o.vcpus = 2;
    o.tcp = true; // the browser's http://127.0.0.1:<port>/ui
    // A small queue per stream subscriber, so a resumed stream overflows it
    // (the reconnect case) with a dozen alerts.
    o.api_extra = {{"stream_queue", stream_queue}};
    return o;
  }()};
  std::string origin = "http://127.0.0.1:" + std::to_string(kvmid.tcp_port);
  temp_dir profile{"chromium"};
  cdp_browser browser{CHROMIUM_BIN, (profile / "profile").string(),
                      (profile / "chromium.log").string()};
  std::vector<std::string> foreign_requests, csp_violations, page_errors;
  std::unique_ptr<cdp_page> page;

  dashboard() {
    std::filesystem::create_directory(profile / "profile");
    browser.on("Network.requestWillBeSent", [this](const json& p) {
      std::string url = p["request"]["url"];
      if (!url.starts_with(origin + "/") && url != "about:blank")
        foreign_requests.push_back(url);
    });
    browser.on("Log.entryAdded", [this](const json& p) {
      std::string text = p["entry"].value("text", "");
      if (text.find("Content Security Policy") != std::string::npos)
        csp_violations.push_back(text);
    });
    browser.on("Runtime.exceptionThrown",
               [this](const json& p) { page_errors.push_back(p["exceptionDetails"].dump()); });
    page = std::make_unique<cdp_page>(browser);
  }
};

std::unique_ptr<dashboard>& the_dashboard() {
  static std::unique_ptr<dashboard> d;
  return d;
}

dashboard& fixture() {
  auto& d = the_dashboard();
  if (!d) {
    REQUIRE_MESSAGE(std::filesystem::exists(CHROMIUM_BIN),
                    CHROMIUM_BIN << " is missing: scripts/deps.sh installs Debian's chromium");
    d = std::make_unique<dashboard>();
  }
  return *d;
}

// Stops what the cases left running when a filter skipped the last case.
struct dashboard_teardown : doctest::IReporter {
  explicit dashboard_teardown(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {
    if (auto& d = the_dashboard()) {
      d->browser.close();
      d->kvmid.stop_kvmid();
      d.reset();
    }
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("dashboard-teardown", 1, dashboard_teardown);

std::string js(const std::string& s) { return json(s).dump(); }

// Types the token into the page's form, as an operator would.
void submit_token(cdp_page& p, const std::string& token) {
  p.wait_for("document.querySelector('#login')?.hidden === false", "the token form");
  p.eval("document.querySelector('#token-input').value = " + js(token)
         + "; document.querySelector('#login-form').requestSubmit(); true");
}

// The dashboard open with the right token (after a case that left it
// elsewhere).
cdp_page& signed_in(dashboard& d) {
  auto& p = *d.page;
  if (p.eval("document.querySelector('#main')?.hidden === false") == true)
    return p;
  p.navigate(d.origin + "/ui");
  submit_token(p, d.kvmid.token);
  p.wait_for("document.querySelector('#main').hidden === false", "the dashboard after the token");
  return p;
}

// The VM page of `vm`, its vCPUs listed.
cdp_page& vm_page(dashboard& d, const std::string& vm, size_t vcpus) {
  auto& p = signed_in(d);
  p.eval("location.hash = '#/vm/" + vm + "'; true");
  p.wait_for("document.querySelector('#vm-name').textContent === " + js(vm)
               + " && document.querySelectorAll('#vcpu-list tbody tr').length === "
               + std::to_string(vcpus),
             "the page of " + vm);
  return p;
}

// The API's own wording of an error answer: "409 conflict: <message>".
std::string api_wording(const http_reply& r) {
  auto j = r.j();
  return std::to_string(r.status) + " " + j["error"]["code"].get<std::string>() + ": "
         + j["error"]["message"].get<std::string>();
}

std::string vcpu_states(kvmid_process& k, const std::string& vm) {
  std::string s;
  json vcpus = k.http("GET", "/v1/vms/" + vm + "/vcpus").j()["vcpus"];
  for (auto& c : vcpus)
    s += c["state"].get<std::string>() + " ";
  return s;
}

// Clicks an action's button, accepts its confirmation and waits for the
// page to report `result`; the confirmation's question.
std::string confirm_action(cdp_page& p, const std::string& button, const std::string& result) {
  p.click(button);
  auto question = p.answer_dialog(true);
  REQUIRE(p.wait_for("document.querySelector('#action-result').textContent === " + js(result),
                     "the page to report '" + result + "'"));
  return question;
}

bool page_shows_vcpus(cdp_page& p, const std::string& state) {
  return p.wait_for("[...document.querySelectorAll('#vcpu-list tbody tr')].every(r => "
                    "r.dataset.state === " + js(state) + ")",
                    "the page to show every vCPU " + state);
}

// How many of the page's alerts are the LSTAR write of `value` on sim-vm-1.
size_t alerts_shown(cdp_page& p, uint64_t value) {
  std::string text = control::hex_u64(value);
  return p.eval("[...document.querySelectorAll('#alerts li.alert')].filter(li => li.dataset.vmName "
                "=== 'sim-vm-1' && li.textContent.includes(" + js(text) + ")).length").get<size_t>();
}

// An LSTAR write of `value` on sim-vm-1, denied: one msr-protection alert.
void lstar_alert(kvmid_process& k, uint64_t value) {
  auto m = get_within(k.sim->write_msr(1, 1, msr_lstar, value), "an LSTAR write");
  REQUIRE(m.event == kvmi::event_id::msr);
}

// A header of a request as DevTools shows it, by its name in any case.
json header(const json& request, const std::string& lower_name) {
  for (auto& [name, value] : request["headers"].items()) {
    std::string n = name;
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
    if (n == lower_name)
      return value;
  }
  return nullptr;
}

uint64_t bus_dropped(kvmid_process& k) {
  auto text = k.http("GET", "/metrics").body;
  auto at = text.find("\nkvmid_bus_dropped_total ");
  REQUIRE(at != std::string::npos);
  return std::stoull(text.substr(at + 25));
}

// Cuts the page's event stream from kvmid's side and holds the page's
// reconnection (the DevTools Fetch domain pauses it) until the caller
// continues it; the paused request.
json cut_stream_and_hold_reconnect(dashboard& d) {
  auto& p = *d.page;
  p.call("Fetch.enable", {{"patterns", json::array({{{"urlPattern", "*/v1/events*"},
                                                      {"requestStage", "Request"}}})}});
  REQUIRE(cut_accepted_connections(d.kvmid.kvmid, d.kvmid.tcp_port) >= 1);
  auto paused = d.browser.wait_event("Fetch.requestPaused", 20s);
  REQUIRE_MESSAGE(paused, "the page did not reconnect its event stream within 20 s");
  CHECK(p.eval("document.querySelector('#stream-status').dataset.state") == "reconnecting");
  return *paused;
}

void release_reconnect(dashboard& d, const json& paused) {
  d.page->call("Fetch.continueRequest", {{"requestId", paused["requestId"]}});
  d.page->call("Fetch.disable");
  CHECK(d.page->wait_for("document.querySelector('#stream-status').dataset.state === 'live'",
                         "the page's event stream live again"));
}

} // namespace

TEST_SUITE("ui") {

TEST_CASE("ui: /ui and its files are served without a token under a strict policy") {
  auto& d = fixture();
  auto head = [&](const std::string& path) {
    return run({CURL_BIN, "-sS", "--max-time", "30", "-D", "-", "-o", "/dev/null",
                "--unix-socket", d.kvmid.api_sock, "http://localhost" + path})
      .out;
  };
  auto page = head("/ui");
  CHECK(page.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(page.find("Content-Type: text/html; charset=utf-8\r\n") != std::string::npos);
  CHECK(page.find("Content-Security-Policy: default-src 'self'; ") != std::string::npos);
  CHECK(page.find("X-Content-Type-Options: nosniff\r\n") != std::string::npos);
  CHECK(page.find("Cache-Control: no-store\r\n") != std::string::npos);
  auto script = head("/ui/app.js");
  CHECK(script.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(script.find("Content-Type: text/javascript; charset=utf-8\r\n") != std::string::npos);
  CHECK(head("/ui/style.css").find("Content-Type: text/css; charset=utf-8\r\n")
        != std::string::npos);
  CHECK(head("/ui/nothing.js").starts_with("HTTP/1.1 404 Not Found\r\n"));
  // The files are public; the API behind them is not.
  CHECK(head("/v1/vms").starts_with("HTTP/1.1 401 Unauthorized\r\n"));
}

TEST_CASE("ui: the page takes the token and lists every simulated VM") {
  auto& d = fixture();
  auto& p = *d.page;
  p.navigate(d.origin + "/ui");
  // Nothing but the token form before the token.
  CHECK(p.eval("document.querySelector('#main').hidden") == true);
  submit_token(p, d.kvmid.token);
  auto vms = d.kvmid.http("GET", "/v1/vms").j()["vms"];
  REQUIRE(vms.size() == 3);
  REQUIRE(p.wait_for("document.querySelectorAll('#vm-list tbody tr').length === 3",
                     "a row for each of the 3 VMs"));
  CHECK(p.eval("sessionStorage.getItem('kvmid-token')") == d.kvmid.token);
  for (auto& vm : vms) {
    std::string row = "#vm-list tr[data-vm=\"" + vm["uuid"].get<std::string>() + "\"]";
    CAPTURE(row);
    auto cells = p.eval("[...document.querySelectorAll(" + js(row + " td")
                        + ")].map(td => td.textContent)");
    REQUIRE(cells.size() == 9);
    CHECK(cells[0] == vm["name"]);
    CHECK(cells[1] == vm["state"]);
    CHECK(cells[2] == vm["protocol"]);
    CHECK(cells[3] == std::to_string(vm["vcpus"].get<int>()));
    CHECK(cells[4] == std::to_string(vm["sessions"].get<int>()));
    CHECK(cells[8] == vm["policy"]);
  }
}

TEST_CASE("ui: a policy alert shows on the page once the simulator has raised it") {
  auto& d = fixture();
  auto& p = signed_in(d);
  REQUIRE(p.wait_for("document.querySelector('#stream-status').dataset.state === 'live'",
                     "the page's event stream"));
  auto m = get_within(d.kvmid.sim->write_msr(1, 0, msr_lstar, 0xdead1234), "an LSTAR write");
  auto answered = std::chrono::steady_clock::now(); // kvmid has decided: the alert is out
  CHECK(m.event == kvmi::event_id::msr);
  bool shown = p.wait_for(
    "[...document.querySelectorAll('#alerts li.alert')].some(li => li.dataset.vmName === "
    "'sim-vm-1' && li.dataset.rule === 'lstar' && li.dataset.name === 'msr-protection' "
    "&& li.textContent.includes('0xdead1234'))",
    "the msr-protection alert of sim-vm-1", alert_deadline);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
    std::chrono::steady_clock::now() - answered);
  CHECK(shown);
  MESSAGE("the alert showed " << took.count() << " ms after the simulator's event was answered"
                              << " (issue 18: within 2000 ms)");
  // The list follows: sim-vm-1's alert count as the API gives it.
  auto alerts = [&] {
    json vms = d.kvmid.http("GET", "/v1/vms").j()["vms"];
    for (auto& v : vms)
      if (v["name"] == "sim-vm-1")
        return v["counters"]["alerts"].get<uint64_t>();
    return uint64_t(0);
  }();
  CHECK(alerts >= 1);
  CHECK(p.wait_for("document.querySelector('#vm-list tr[data-name=\"sim-vm-1\"] td:nth-child(7)')"
                   ".textContent === '" + std::to_string(alerts) + "'",
                   "the VM list to show sim-vm-1's alerts"));
  // The reply latency histogram from /metrics.
  CHECK(p.wait_for("document.querySelectorAll('#latency .bucket').length === 16 && "
                   "document.querySelector('#latency-summary').textContent.includes('replies')",
                   "the event reply latency histogram"));
}

TEST_CASE("ui: the live alerts resume after kvmid cuts the stream - from Last-Event-ID - none twice - and kvmid's drops are shown") {
  auto& d = fixture();
  auto& p = signed_in(d);
  d.browser.keep("Fetch.requestPaused");
  REQUIRE(p.wait_for("document.querySelector('#stream-status').dataset.state === 'live'",
                     "the page's event stream"));
  lstar_alert(d.kvmid, 0x5eed0000);
  REQUIRE(p.wait_for("document.querySelector('#alerts li.alert')?.textContent.includes('0x5eed0000')",
                     "the first alert"));

  // Alerts raised while the page is cut off come with the resumed stream.
  auto paused = cut_stream_and_hold_reconnect(d);
  auto last_id = p.eval("document.querySelector('#stream-status').dataset.lastEventId");
  REQUIRE(last_id.is_string());
  CHECK(header(paused["request"], "last-event-id") == last_id);
  lstar_alert(d.kvmid, 0x5eed0001);
  lstar_alert(d.kvmid, 0x5eed0002);
  release_reconnect(d, paused);
  CHECK(p.wait_for("document.querySelector('#alerts li.alert')?.textContent.includes('0x5eed0002')",
                   "the alerts raised while cut off"));
  for (uint64_t v : {0x5eed0000, 0x5eed0001, 0x5eed0002})
    CHECK(alerts_shown(p, v) == 1);
  CHECK(p.eval("(() => { const s = [...document.querySelectorAll('#alerts li.alert')]"
               ".map(li => li.dataset.seq); return new Set(s).size === s.length; })()") == true);

  // More than the stream's queue holds while cut off: the resumed stream
  // replays the first `stream_queue` of them and kvmid reports the rest
  // dropped, which the page shows.
  uint64_t dropped_before = bus_dropped(d.kvmid);
  auto page_dropped = [&] {
    return std::stoull(p.eval("document.querySelector('#stream-notes').dataset.dropped || '0'")
                         .get<std::string>());
  };
  auto shown_before = page_dropped();
  paused = cut_stream_and_hold_reconnect(d);
  constexpr size_t extra = 3;
  for (uint64_t i = 0; i < stream_queue + extra; ++i)
    lstar_alert(d.kvmid, 0x5eed0100 + i);
  release_reconnect(d, paused);
  CHECK(bus_dropped(d.kvmid) - dropped_before == extra);
  CHECK(p.wait_for("document.querySelector('#stream-notes').dataset.dropped === '"
                     + std::to_string(shown_before + extra) + "'",
                   "the page to show kvmid's drops"));
  CHECK(p.text("#stream-notes") == "records dropped by kvmid: " + std::to_string(shown_before + extra));
  for (uint64_t i = 0; i < stream_queue + extra; ++i) {
    CAPTURE(i);
    CHECK(alerts_shown(p, 0x5eed0100 + i) == (i < stream_queue ? 1u : 0u));
  }
}

TEST_CASE("ui: the VM page shows each rule's hits as kvmid counts them") {
  auto& d = fixture();
  auto& p = vm_page(d, "sim-vm-1", 2);
  json hits = d.kvmid.http("GET", "/v1/vms/sim-vm-1").j()["rule_hits"];
  REQUIRE(hits.size() == 2); // kernel-text and lstar
  for (auto& h : hits) {
    CAPTURE(h.dump());
    if (h["name"] == "lstar")
      CHECK(h["hits"].get<uint64_t>() >= 1); // the earlier cases' alerts
    std::string cell = "#rule-list tr[data-kind=\"" + h["kind"].get<std::string>()
                       + "\"][data-rule=\"" + h["name"].get<std::string>()
                       + "\"] td:nth-child(4)";
    CHECK(p.wait_for("document.querySelector(" + js(cell) + ")?.textContent === '"
                       + std::to_string(h["hits"].get<uint64_t>()) + "'",
                     "the page to show the API's count"));
  }
}

TEST_CASE("ui: pausing a VM from the page holds every vCPU and resuming releases them") {
  auto& d = fixture();
  auto& p = vm_page(d, "sim-vm-2", 2);
  // Declining the confirmation does nothing.
  p.click("#pause-vm");
  CHECK(p.answer_dialog(false).find("Pause sim-vm-2?") != std::string::npos);
  CHECK(d.kvmid.http("GET", "/v1/vms/sim-vm-2").j()["paused"] == false);

  CHECK(confirm_action(p, "#pause-vm", "sim-vm-2: paused").find("Pause sim-vm-2?")
        != std::string::npos);
  // Through the API: every vCPU is held.
  CHECK(d.kvmid.http("GET", "/v1/vms/sim-vm-2").j()["paused"] == true);
  CHECK(vcpu_states(d.kvmid, "sim-vm-2") == "paused paused ");
  for (uint16_t v = 0; v < 2; ++v)
    CHECK(d.kvmid.sim->vcpu(2, v)->state == kvmi::sim::vcpu_state::paused);
  CHECK(page_shows_vcpus(p, "paused"));

  CHECK(confirm_action(p, "#resume-vm", "sim-vm-2: resumed").find("Resume sim-vm-2?")
        != std::string::npos);
  CHECK(d.kvmid.http("GET", "/v1/vms/sim-vm-2").j()["paused"] == false);
  CHECK(wait_until([&] { return vcpu_states(d.kvmid, "sim-vm-2") == "running running "; },
                   "both vCPUs of sim-vm-2 running again"));
  CHECK(page_shows_vcpus(p, "running"));
}

TEST_CASE("ui: breakpoints are added and removed from the page and errors read as the API's") {
  auto& d = fixture();
  auto& p = vm_page(d, "sim-vm-0", 2);
  const std::string gpa = "0x400010";
  const std::string row = "#breakpoint-list tr[data-gpa=\"" + gpa + "\"]";
  p.eval("document.querySelector('#breakpoint-gpa').value = " + js(gpa) + "; true");
  p.click("#breakpoint-form button");
  CHECK(p.answer_dialog(true).find("breakpoint at " + gpa) != std::string::npos);
  REQUIRE(p.wait_for("document.querySelector(" + js(row) + ")", "the new breakpoint's row"));
  CHECK(d.kvmid.sim->memory(0, 0x400010, 1)[0] == 0xCC);

  // A second one at the same gpa: the API's 409, word for word.
  auto again = d.kvmid.http("POST", "/v1/vms/sim-vm-0/breakpoints", R"({"gpa":"0x400010"})");
  REQUIRE(again.status == 409);
  p.click("#breakpoint-form button");
  p.answer_dialog(true);
  CHECK(p.wait_for("document.querySelector('#action-error').hidden === false",
                   "the page to show the refusal"));
  CHECK(p.text("#action-error") == api_wording(again));

  p.click(row + " button.remove-breakpoint");
  CHECK(p.answer_dialog(true).find("Remove the breakpoint at " + gpa) != std::string::npos);
  CHECK(p.wait_for("!document.querySelector(" + js(row) + ")", "the breakpoint's row to go"));
  CHECK(d.kvmid.http("GET", "/v1/vms/sim-vm-0/breakpoints").j()["breakpoints"].empty());
}

TEST_CASE("ui: the memory viewer dumps guest memory and shows the API's refusal of unsafe regions") {
  auto& d = fixture();
  auto& p = vm_page(d, "sim-vm-0", 2);
  d.kvmid.sim->guest_write(0, 0x500000, {'k', 'v', 'm', 'i', 0, 1, 2, 3});
  p.eval("document.querySelector('#memory-gpa').value = '0x500000';"
         "document.querySelector('#memory-len').value = '32'; true");
  p.click("#memory-form button");
  REQUIRE(p.wait_for("document.querySelector('#memory-dump').textContent !== ''", "the dump"));
  auto dump = p.text("#memory-dump");
  CHECK(dump.starts_with("000000500000  6b 76 6d 69 00 01 02 03 "));
  CHECK(dump.find("  kvmi....") != std::string::npos);
  CHECK(std::count(dump.begin(), dump.end(), '\n') == 1); // 32 bytes: two lines

  std::string unsafe;
  json map = d.kvmid.http("GET", "/v1/vms/sim-vm-0").j()["memory_map"];
  for (auto& r : map)
    if (r["type"] != "ram" && unsafe.empty())
      unsafe = r["gpa"];
  REQUIRE_FALSE(unsafe.empty());
  auto refused = d.kvmid.http("GET", "/v1/vms/sim-vm-0/memory?gpa=" + unsafe + "&len=16");
  REQUIRE(refused.status == 422);
  p.eval("document.querySelector('#memory-gpa').value = " + js(unsafe)
         + "; document.querySelector('#memory-len').value = '16'; true");
  p.click("#memory-form button");
  REQUIRE(p.wait_for("document.querySelector('#memory-error').hidden === false", "the refusal"));
  CHECK(p.text("#memory-error") == api_wording(refused));
  CHECK(p.text("#memory-dump").empty());
}

TEST_CASE("ui: a wrong token shows the 401 page") {
  auto& d = fixture();
  auto& p = *d.page;
  p.navigate(d.origin + "/ui");
  p.eval("sessionStorage.clear(); true"); // a tab that has not been given the token yet
  p.navigate(d.origin + "/ui");
  submit_token(p, "not-the-token");
  REQUIRE(p.wait_for("document.querySelector('#unauthorized').hidden === false", "the 401 page"));
  CHECK(p.text("#unauthorized h2") == "401 Unauthorized");
  CHECK(p.text("#unauthorized-message") == "401 unauthorized: wrong bearer token");
  CHECK(p.eval("document.querySelector('#main').hidden") == true);
  CHECK(p.eval("sessionStorage.getItem('kvmid-token')").is_null()); // not kept
}

TEST_CASE("ui: a screenshot of a VM page with live alerts") {
  auto& d = fixture();
  auto& p = vm_page(d, "sim-vm-0", 2);
  get_within(d.kvmid.sim->write_msr(0, 1, msr_lstar, 0xbad0c0de), "an LSTAR write");
  get_within(d.kvmid.sim->access(0, 0, hot_gpa + 0x40, kvmi::page_access_w),
             "a write to protected kernel text");
  REQUIRE(p.wait_for("document.querySelector('#alerts li.alert[data-name=\"page-protection\"]')",
                     "the page-protection alert"));
  REQUIRE(p.wait_for("document.querySelector('#rule-list tr[data-rule=\"kernel-text\"] "
                     "td:nth-child(4)').textContent !== '0'",
                     "the kernel-text rule's hit count"));
  p.eval("document.querySelector('#memory-gpa').value = '0x100000'; true");
  p.click("#memory-form button");
  p.wait_for("document.querySelector('#memory-dump').textContent !== ''", "the dump");
  p.call("Emulation.setDeviceMetricsOverride",
         {{"width", 1280}, {"height", 1000}, {"deviceScaleFactor", 1}, {"mobile", false}});
  auto shot = p.call("Page.captureScreenshot", {{"format", "png"}});
  auto png = control::from_base64(shot["data"].get<std::string>());
  REQUIRE(png);
  REQUIRE(png->size() > 8);
  const std::vector<uint8_t> signature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  CHECK(std::equal(signature.begin(), signature.end(), png->begin()));
  std::string out = std::string(UI_SCREENSHOT_DIR) + "/dashboard.png";
  std::ofstream(out, std::ios::binary).write(reinterpret_cast<const char*>(png->data()),
                                             std::streamsize(png->size()));
  MESSAGE("screenshot: " << out);
}

TEST_CASE("ui: the browser loaded nothing but kvmid and the page broke no policy") {
  auto& d = fixture();
  d.browser.pump();
  CHECK(d.foreign_requests.empty());
  for (auto& u : d.foreign_requests)
    MESSAGE("request outside kvmid: " << u);
  CHECK(d.csp_violations.empty());
  for (auto& v : d.csp_violations)
    MESSAGE(v);
  CHECK(d.page_errors.empty());
  for (auto& e : d.page_errors)
    MESSAGE(e);
}

TEST_CASE("ui: kvmid stops cleanly after the dashboard session") {
  auto& d = fixture();
  d.browser.close();
  CHECK(d.kvmid.sim->make_report().ok());
  INFO("kvmid stderr: " << d.kvmid.log());
  CHECK(d.kvmid.stop_kvmid() == 0);
  the_dashboard().reset();
}

} // TEST_SUITE
