// One browser tab over CDP: navigate, evaluate JavaScript, wait for a
// condition in the page under a deadline, click, answer dialogs.
#pragma once

#include "tests/support/wait.hpp"
#include "tests/ui/cdp_browser.hpp"

#include <doctest/doctest.h>

#include <string>

namespace kvmid::test {

class cdp_page {
public:
  using json = nlohmann::json;

  explicit cdp_page(cdp_browser& b) : b_(b) {
    b_.keep("Page.loadEventFired");
    b_.keep("Page.javascriptDialogOpening");
    auto target = b_.call("Target.createTarget", {{"url", "about:blank"}});
    session_ = b_.call("Target.attachToTarget",
                       {{"targetId", target["targetId"]}, {"flatten", true}})["sessionId"];
    call("Page.enable");
    call("Runtime.enable");
    call("Log.enable");
    call("Network.enable");
  }

  json call(const std::string& method, json params = json::object()) {
    return b_.call(method, std::move(params), session_);
  }

  // Loads `url` and waits for its load event.
  void navigate(const std::string& url) {
    while (b_.wait_event("Page.loadEventFired", std::chrono::milliseconds(0))) {
    }
    auto r = call("Page.navigate", {{"url", url}});
    if (r.contains("errorText"))
      FAIL("navigating to " << url << ": " << r["errorText"].get<std::string>());
    if (!b_.wait_event("Page.loadEventFired", default_deadline))
      FAIL("no load event for " << url << " within " << default_deadline.count() << " ms");
  }

  // The value of a JavaScript expression (promises awaited); a thrown
  // exception fails the test with its text.
  json eval(const std::string& expr) {
    auto r = call("Runtime.evaluate",
                  {{"expression", expr}, {"returnByValue", true}, {"awaitPromise", true}});
    if (r.contains("exceptionDetails"))
      FAIL("page threw on `" << expr << "`: " << r["exceptionDetails"].dump());
    return r["result"].value("value", json());
  }
  std::string text(const std::string& selector) {
    auto v = eval("(document.querySelector(" + json(selector).dump() + ") || {}).textContent || ''");
    return v.is_string() ? v.get<std::string>() : "";
  }

  // Polls the expression until it is true; false (and a failed check
  // naming `what`) past the deadline.
  bool wait_for(const std::string& expr, const std::string& what,
                std::chrono::milliseconds deadline = default_deadline) {
    return wait_until([&] { return eval("!!(" + expr + ")") == true; }, what + " (" + expr + ")",
                      deadline);
  }

  // Clicks from a timer, so a confirm() it opens does not block this call.
  // The element is looked up again when the timer fires: the page may have
  // redrawn it meanwhile, and a detached copy would take the click.
  void click(const std::string& selector) {
    std::string sel = json(selector).dump();
    auto found = eval("!!document.querySelector(" + sel + ") && (setTimeout(() => "
                      "document.querySelector(" + sel + ")?.click()), true)");
    REQUIRE_MESSAGE(found == true, "nothing to click at " << selector);
  }

  // Waits for the page's confirm()/alert() and answers it; its message.
  std::string answer_dialog(bool accept) {
    auto d = b_.wait_event("Page.javascriptDialogOpening", default_deadline);
    REQUIRE_MESSAGE(d, "no dialog opened within " << default_deadline.count() << " ms");
    call("Page.handleJavaScriptDialog", {{"accept", accept}});
    return (*d)["message"].get<std::string>();
  }

  const std::string& session() const { return session_; }

private:
  cdp_browser& b_;
  std::string session_;
};

} // namespace kvmid::test
