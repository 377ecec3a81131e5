//! RFC 8288 `Link` headers as registries use them for pagination: the items of a header
//! (commas inside `<...>` or quotes do not split), and the query of the `rel="next"` page,
//! which must stay on the path that was asked for.

/// A `Link` header that does not name a next page ferry may follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LinkError(String);

/// The query of the next page an upstream names in `Link: <URL>; rel="next"` (RFC 8288), if
/// any. The link is resolved against `request_url` and must name the same path; only its
/// query is used (without `ns`, which ferry adds itself), on the same upstream, so a link
/// cannot send ferry elsewhere.
pub(crate) fn next_page_query(
    headers: &http::HeaderMap,
    request_url: &reqwest::Url,
    what: &str,
) -> Result<Option<String>, LinkError> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for (target, params) in link_values(value).map_err(|e| LinkError(format!("{what} {e}")))? {
            if !params.iter().any(|(name, value)| {
                name.eq_ignore_ascii_case("rel")
                    && value
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            }) {
                continue;
            }
            let url = request_url
                .join(target)
                .map_err(|_| LinkError(format!("{what} Link names no URL ({target:?})")))?;
            let decoded = |path: &str| path.replace("%3A", ":").replace("%3a", ":");
            if decoded(url.path()) != decoded(request_url.path()) {
                return Err(LinkError(format!(
                    "{what} Link leaves the {what} path ({})",
                    url.path()
                )));
            }
            let query: Vec<String> = url
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty() && *pair != "ns" && !pair.starts_with("ns="))
                .map(str::to_owned)
                .collect();
            return Ok(Some(query.join("&")));
        }
    }
    Ok(None)
}

/// One item of a `Link` header: its target and its `name=value` parameters.
type LinkValue<'a> = (&'a str, Vec<(&'a str, String)>);

/// The `<target>; name=value; ...` items of one `Link` header value. Commas inside `<...>`
/// or a quoted parameter do not split items.
fn link_values(value: &str) -> Result<Vec<LinkValue<'_>>, LinkError> {
    let malformed = || {
        LinkError(format!(
            "Link header is not <URL>; rel=\"next\" ({value:?})"
        ))
    };
    let mut items = Vec::new();
    let mut rest = value.trim_start();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('<').ok_or_else(malformed)?;
        let close = inner.find('>').ok_or_else(malformed)?;
        let target = &inner[..close];
        rest = &inner[close + 1..];
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start();
            match rest.chars().next() {
                Some(';') => rest = &rest[1..],
                Some(',') => {
                    rest = rest[1..].trim_start();
                    break;
                }
                None => break,
                Some(_) => return Err(malformed()),
            }
            let (name, after) = rest.split_once('=').ok_or_else(malformed)?;
            let after = after.trim_start();
            let (param, remaining) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"').ok_or_else(malformed)?;
                    (quoted[..end].to_owned(), &quoted[end + 1..])
                }
                None => {
                    let end = after.find([';', ',']).unwrap_or(after.len());
                    (after[..end].trim().to_owned(), &after[end..])
                }
            };
            params.push((name.trim(), param));
            rest = remaining;
        }
        items.push((target, params));
    }
    Ok(items)
}
