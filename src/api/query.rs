//! Query-string values as Conductor's server reads them. Spring converts a boolean parameter case-insensitively
//! from true/false, on/off, yes/no or 1/0, and Conductor's clients rely on it: the Python SDK sends its booleans as
//! Python spells them (`?overwrite=True`, `?includeTasks=True`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::api::error::ApiError;

/// Axum's `Query`, but a query string that does not parse is answered as all bad input is: 400 with Conductor's
/// error body naming the parameter, not axum's plain-text rejection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri).map(|q| Query(q.0)).map_err(|e| {
            ApiError::invalid(format!(
                "query string: {}",
                e.body_text().trim_start_matches("Failed to deserialize query string: ")
            ))
        })
    }
}

/// A boolean query parameter, read the way Spring reads one; an empty value is absent.
pub(crate) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_bool(&text).map_err(serde::de::Error::custom)
}

fn parse_bool(text: &str) -> Result<Option<bool>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "on" | "yes" | "1" => Ok(Some(true)),
        "false" | "off" | "no" | "0" => Ok(Some(false)),
        _ => Err(format!("expected true or false, got '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Params {
        #[serde(default, deserialize_with = "lenient_bool")]
        flag: Option<bool>,
    }

    fn flag(query: &str) -> Result<Option<bool>, String> {
        let uri: axum::http::Uri = format!("/x?{query}").parse().map_err(|e| format!("{e}"))?;
        axum::extract::Query::<Params>::try_from_uri(&uri).map(|q| q.0.flag).map_err(|e| e.body_text())
    }

    #[test]
    fn reads_booleans_as_conductor_does() {
        for (query, want) in [
            ("flag=true", Some(true)),
            ("flag=True", Some(true)),
            ("flag=TRUE", Some(true)),
            ("flag=1", Some(true)),
            ("flag=yes", Some(true)),
            ("flag=false", Some(false)),
            ("flag=False", Some(false)),
            ("flag=off", Some(false)),
            ("flag=0", Some(false)),
            ("flag=", None),
            ("", None),
        ] {
            assert_eq!(flag(query), Ok(want), "{query}");
        }
    }

    #[test]
    fn refuses_anything_else() {
        let err = flag("flag=maybe").expect_err("not a boolean");
        assert!(err.contains("expected true or false, got 'maybe'"), "{err}");
    }
}
