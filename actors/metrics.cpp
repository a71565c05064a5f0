#include "actors/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace kvmid {

histogram::histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  std::sort(bounds_.begin(), bounds_.end());
  buckets_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i)
    buckets_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double seconds) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  double ns = seconds > 0 ? seconds * 1e9 : 0;
  sum_ns_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
}

std::vector<uint64_t> histogram::cumulative() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t acc = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    acc += buckets_[i].load(std::memory_order_relaxed);
    out[i] = acc;
  }
  return out;
}

double histogram::sum() const {
  return static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
}

metrics_registry::series& metrics_registry::get(const std::string& name,
                                                const std::string& help, metric_type t,
                                                labels l) {
  std::sort(l.begin(), l.end());
  auto& fam = families_[name];
  if (fam.by_labels.empty()) {
    fam.help = help;
    fam.type = t;
  } else if (fam.type != t) {
    throw std::logic_error("metric " + name + " registered with two types");
  }
  auto& s = fam.by_labels[l];
  s.lbls = l;
  return s;
}

counter& metrics_registry::get_counter(const std::string& name, const std::string& help,
                                       labels l) {
  std::lock_guard lk(mu_);
  auto& s = get(name, help, metric_type::counter, std::move(l));
  if (!s.c)
    s.c = std::make_unique<counter>();
  return *s.c;
}

void metrics_registry::declare(const std::string& name, const std::string& help,
                               metric_type t) {
  std::lock_guard lk(mu_);
  auto& fam = families_[name];
  if (fam.by_labels.empty()) {
    fam.help = help;
    fam.type = t;
  }
}

gauge& metrics_registry::get_gauge(const std::string& name, const std::string& help, labels l) {
  std::lock_guard lk(mu_);
  auto& s = get(name, help, metric_type::gauge, std::move(l));
  if (!s.g)
    s.g = std::make_unique<gauge>();
  return *s.g;
}

histogram& metrics_registry::get_histogram(const std::string& name, const std::string& help,
                                           std::vector<double> bounds, labels l) {
  std::lock_guard lk(mu_);
  auto& s = get(name, help, metric_type::histogram, std::move(l));
  if (!s.h)
    s.h = std::make_unique<histogram>(std::move(bounds));
  return *s.h;
}

std::vector<metric_family> metrics_registry::snapshot() const {
  std::lock_guard lk(mu_);
  std::vector<metric_family> out;
  for (auto& [name, fam] : families_) {
    metric_family f{name, fam.help, fam.type, {}};
    for (auto& [l, s] : fam.by_labels) {
      metric_sample m;
      m.lbls = l;
      if (s.c)
        m.value = static_cast<double>(s.c->value());
      else if (s.g)
        m.value = static_cast<double>(s.g->value());
      else if (s.h) {
        m.bounds = s.h->bounds();
        m.cumulative = s.h->cumulative();
        m.count = m.cumulative.back();
        m.sum = s.h->sum();
      }
      f.samples.push_back(std::move(m));
    }
    out.push_back(std::move(f));
  }
  return out;
}

namespace {
std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '\\' || c == '"')
      o += '\\', o += c;
    else if (c == '\n')
      o += "\\n";
    else
      o += c;
  }
  return o;
}
std::string render_labels(const labels& l, const char* extra_k = nullptr,
                          const std::string& extra_v = {}) {
  if (l.empty() && !extra_k)
    return {};
  std::string s = "{";
  bool first = true;
  for (auto& [k, v] : l) {
    s += (first ? "" : ",") + k + "=\"" + escape(v) + "\"";
    first = false;
  }
  if (extra_k)
    s += std::string(first ? "" : ",") + extra_k + "=\"" + extra_v + "\"";
  return s + "}";
}
std::string num(double v) {
  if (std::isinf(v))
    return v > 0 ? "+Inf" : "-Inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}
} // namespace

std::string metrics_registry::render_prometheus() const {
  std::string out;
  for (auto& f : snapshot()) {
    const char* t = f.type == metric_type::counter ? "counter"
                    : f.type == metric_type::gauge ? "gauge"
                                                   : "histogram";
    out += "# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + t + "\n";
    for (auto& s : f.samples) {
      if (f.type != metric_type::histogram) {
        out += f.name + render_labels(s.lbls) + " " + num(s.value) + "\n";
        continue;
      }
      for (size_t i = 0; i < s.cumulative.size(); ++i) {
        std::string le = i < s.bounds.size() ? num(s.bounds[i]) : "+Inf";
        out += f.name + "_bucket" + render_labels(s.lbls, "le", le) + " "
               + std::to_string(s.cumulative[i]) + "\n";
      }
      out += f.name + "_sum" + render_labels(s.lbls) + " " + num(s.sum) + "\n";
      out += f.name + "_count" + render_labels(s.lbls) + " " + std::to_string(s.count) + "\n";
    }
  }
  return out;
}

std::vector<double> reply_latency_bounds() {
  return {10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 1.0};
}

std::vector<double> hold_bounds() {
  return {1e-3, 10e-3, 100e-3, 1.0, 10.0, 60.0, 600.0, 3600.0};
}

} // namespace kvmid
