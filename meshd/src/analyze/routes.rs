//! Checks within one VirtualService's rules:
//! - IST0122 invalid regular expressions (Istio's `virtualservice.RegexAnalyzer`, plus
//!   `withoutHeaders` and `uriRegexRewrite.match`, which meshd compiles too); where meshd
//!   would refuse the expression, also IST0106 with the text of Istio's validation;
//! - IST0130 / IST0131 rules and matches that can never be used, as Istio's
//!   `analyzeUnreachable{HTTP,TCP,TLS}Rules` in `pkg/config/validation`.

use std::collections::HashMap;

use serde_json::Value;

use super::docs::{Doc, Set};
use super::lines::FieldPath;
use super::{Level, Message};
use crate::config::api;

pub(crate) fn check(set: &Set<'_>, out: &mut Vec<Message>) {
    for (d, vs) in set.virtual_services() {
        if !d.own {
            continue;
        }
        regexes(d, &vs.spec, out);
        unreachable(d, &vs.spec, out);
    }
}

/// Go's wording for a regex error: `error parsing regexp: <what>: `<re>``.
fn regex_problem(re: &str) -> Option<String> {
    let err = regex::Regex::new(re).err()?;
    let text = err.to_string();
    let what = text.lines().find_map(|l| l.strip_prefix("error: ")).unwrap_or(text.trim()).to_string();
    Some(format!("error parsing regexp: {what}: `{re}`"))
}

/// One regex field: where Istio names it, its path, and whether meshd compiles it.
fn regex_field(d: &Doc, where_: &str, re: &str, path: FieldPath, compiled: bool, out: &mut Vec<Message>) {
    let Some(problem) = regex_problem(re) else { return };
    let text = format!("Field {where_:?} regular expression invalid: {re:?} ({problem})");
    d.report(out, Level::Warning, "IST0122", &path, text);
    if compiled {
        let text = format!(
            "Schema validation error: {where_:?}: {problem}; Istio uses RE2 style regex-based match \
             (https://github.com/google/re2/wiki/Syntax)"
        );
        d.report(out, Level::Error, "IST0106", &path, text);
    }
}

fn regexes(d: &Doc, vs: &api::VirtualServiceSpec, out: &mut Vec<Message>) {
    for (i, route) in vs.http.iter().enumerate() {
        let http = FieldPath::default().key("spec").key("http").index(i);
        for (j, m) in route.r#match.iter().enumerate() {
            let mp = http.key("match").index(j);
            let single = [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)];
            for (name, sm) in single {
                if let Some(re) = sm.as_ref().and_then(|s| s.regex.as_deref()) {
                    regex_field(d, name, re, mp.key(name).key("regex"), true, out);
                }
            }
            let maps =
                [("headers", &m.headers), ("queryParams", &m.query_params), ("withoutHeaders", &m.without_headers)];
            for (name, map) in maps {
                for (k, sm) in map {
                    if let Some(re) = sm.regex.as_deref() {
                        regex_field(d, name, re, mp.key(name).key(k).key("regex"), true, out);
                    }
                }
            }
        }
        if let Some(cors) = &route.cors_policy {
            for (j, o) in cors.allow_origins.iter().enumerate() {
                if let Some(re) = o.regex.as_deref() {
                    let path = http.key("corsPolicy").key("allowOrigins").index(j).key("regex");
                    regex_field(d, "corsPolicy.allowOrigins", re, path, false, out);
                }
            }
        }
        if let Some(re) =
            route.rewrite.as_ref().and_then(|r| r.uri_regex_rewrite.as_ref()).and_then(|r| r.r#match.as_deref())
        {
            let path = http.key("rewrite").key("uriRegexRewrite").key("match");
            regex_field(d, "uriRegexRewrite.match", re, path, true, out);
        }
    }
}

/// A match serialized for comparison, without its name and without default values
/// (Istio compares the protobuf JSON, which omits them).
fn canonical<T: serde::Serialize>(m: &T) -> String {
    fn prune(v: Value) -> Option<Value> {
        match v {
            Value::Null | Value::Bool(false) => None,
            Value::Number(n) if n.as_f64() == Some(0.0) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(prune).collect())),
            Value::Object(o) => {
                Some(Value::Object(o.into_iter().filter_map(|(k, v)| prune(v).map(|v| (k, v))).collect()))
            }
            other => Some(other),
        }
    }
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.remove("name");
    }
    prune(v).map(|v| v.to_string()).unwrap_or_default()
}

/// Istio's rule / match names: the quoted name when there is one, else `#n`.
fn label(name: Option<&str>, n: usize) -> String {
    match name.filter(|s| !s.is_empty()) {
        Some(s) => format!("{s:?}"),
        None => format!("#{n}"),
    }
}

/// A rule reduced to what the duplicate check needs.
struct Rule {
    name: Option<String>,
    /// (match name, canonical form) of each match.
    matches: Vec<(Option<String>, String)>,
}

fn unused(d: &Doc, path: FieldPath, rule: String, reason: &str, out: &mut Vec<Message>) {
    d.report(out, Level::Warning, "IST0130", &path, format!("VirtualService rule {rule} not used ({reason})."));
}

fn ineffective(d: &Doc, path: FieldPath, rule: String, m: String, dup: String, out: &mut Vec<Message>) {
    let text = format!("VirtualService rule {rule} match {m} is not used (duplicate/overlapping match in rule {dup}).");
    d.report(out, Level::Info, "IST0131", &path, text);
}

/// The check shared by http, tcp and tls rules; returns the (rule, match) pairs seen for
/// the first time, in order.
fn scan(d: &Doc, section: &str, rules: &[Rule], out: &mut Vec<Message>) -> Vec<(usize, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut empty_seen = false;
    let mut fresh = Vec::new();
    for (rn, rule) in rules.iter().enumerate() {
        let rpath = FieldPath::default().key("spec").key(section).index(rn);
        let rlabel = label(rule.name.as_deref(), rn);
        if rule.matches.is_empty() {
            if empty_seen {
                unused(d, rpath, rlabel, "only the last rule can have no matches", out);
            }
            empty_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (mn, (mname, key)) in rule.matches.iter().enumerate() {
            if empty_seen {
                unused(d, rpath.clone(), rlabel.clone(), "route without matches defined before", out);
                continue;
            }
            if let Some(&dn) = seen.get(key.as_str()) {
                let dup = label(rules[dn].name.as_deref(), dn);
                let mpath = rpath.key("match").index(mn);
                ineffective(d, mpath, rlabel.clone(), label(mname.as_deref(), mn), dup, out);
                duplicates += 1;
                continue;
            }
            seen.insert(key, rn);
            fresh.push((rn, mn));
        }
        if duplicates == rule.matches.len() {
            unused(d, rpath, rlabel, "all matches used by prior rules", out);
        }
    }
    fresh
}

fn unreachable(d: &Doc, vs: &api::VirtualServiceSpec, out: &mut Vec<Message>) {
    let http: Vec<Rule> = vs
        .http
        .iter()
        .map(|r| Rule {
            name: r.name.clone(),
            matches: r.r#match.iter().map(|m| (m.name.clone(), canonical(m))).collect(),
        })
        .collect();
    let fresh = scan(d, "http", &http, out);
    overlapping_prefixes(d, vs, &fresh, out);
    let tcp: Vec<Rule> = vs
        .tcp
        .iter()
        .map(|r| Rule { name: None, matches: r.r#match.iter().map(|m| (None, canonical(m))).collect() })
        .collect();
    scan(d, "tcp", &tcp, out);
    let tls: Vec<Rule> = vs
        .tls
        .iter()
        .map(|r| Rule { name: None, matches: r.r#match.iter().map(|m| (None, canonical(m))).collect() })
        .collect();
    scan(d, "tls", &tls, out);
}

/// A match on a URI prefix, with the other conditions reduced to strings as Istio's
/// `OverlappingMatchValidationForHTTPRoute`.
struct PrefixMatch {
    rule: usize,
    index: usize,
    rule_label: String,
    match_label: String,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: HashMap<String, String>,
    query_params: HashMap<String, String>,
    without_headers: HashMap<String, String>,
}

fn exact_or_prefix(sm: Option<&api::StringMatch>) -> String {
    match sm {
        Some(api::StringMatch { exact: Some(e), .. }) if !e.is_empty() => format!("exact:{e}"),
        Some(api::StringMatch { prefix: Some(p), .. }) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn reduce(map: &std::collections::BTreeMap<String, api::StringMatch>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), exact_or_prefix(Some(v)))).collect()
}

/// Whether the later match `b` is covered by the earlier `a` (Istio's `coveredValidation`).
fn covered(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    let value_ok = |x: &String, y: &String| x == y || x.starts_with(y.as_str());
    let map_ok = |x: &HashMap<String, String>, y: &HashMap<String, String>| {
        x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| value_ok(v, w)))
    };
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && value_ok(&a.method, &b.method)
        && value_ok(&a.authority, &b.authority)
        && map_ok(&a.headers, &b.headers)
        && map_ok(&a.query_params, &b.query_params)
        && map_ok(&a.without_headers, &b.without_headers)
}

/// IST0131 for a prefix match made unreachable by a shorter prefix in an earlier match.
fn overlapping_prefixes(d: &Doc, vs: &api::VirtualServiceSpec, fresh: &[(usize, usize)], out: &mut Vec<Message>) {
    let mut prefixed = Vec::new();
    for &(rule, index) in fresh {
        let route = &vs.http[rule];
        let m = &route.r#match[index];
        let Some(prefix) = m.uri.as_ref().and_then(|u| u.prefix.clone()).filter(|p| !p.is_empty()) else { continue };
        let method = match exact_or_prefix(m.method.as_ref()) {
            s if s.is_empty() => "exact:GET".to_string(),
            s => s,
        };
        prefixed.push(PrefixMatch {
            rule,
            index,
            rule_label: label(route.name.as_deref(), rule),
            match_label: label(m.name.as_deref(), index),
            prefix,
            port: m.port.unwrap_or(0),
            method,
            authority: exact_or_prefix(m.authority.as_ref()),
            headers: reduce(&m.headers),
            query_params: reduce(&m.query_params),
            without_headers: reduce(&m.without_headers),
        });
    }
    for (i, a) in prefixed.iter().enumerate() {
        for b in &prefixed[i + 1..] {
            if a.prefix == b.prefix || !covered(a, b) {
                continue;
            }
            let path = FieldPath::default().key("spec").key("http").index(b.rule).key("match").index(b.index);
            let m = format!("{} of prefix {}", b.match_label, b.prefix);
            let dup = format!("{} of prefix {} on {}", a.match_label, a.prefix, a.rule_label);
            ineffective(d, path, b.rule_label.clone(), m, dup, out);
        }
    }
}
