//! CPGW order endpoints.
//!
//! Order placement needs finer failure classes than [`CpgwError`]: what matters is whether
//! the order *could have landed*. [`SendFailure::NotSent`] means certainly not (the connection
//! was never made, or CPGW answered 4xx); [`SendFailure::Indeterminate`] means the request may
//! have reached IBKR (timeout after connecting, 5xx, connection lost, unreadable answer).
//! Read-only calls keep using [`CpgwError`].

use super::client::{CpgwClient, CpgwError, RawFailure, path_segment};
use super::pacer::{Endpoint, Lane};
use super::types::JsonText;
use serde::Deserialize;
use serde_json::Value;

/// Longest broker text kept from a rejection (it is shown to the caller).
const MAX_REASON_LEN: usize = 300;

/// Why an order request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// Certainly not placed: no connection was made, or CPGW refused the request.
    NotSent { reason: String },
    /// CPGW has no authenticated session (HTTP 401): nothing was placed.
    NotAuthenticated,
    /// CPGW or IBKR rejected the order (HTTP 4xx or an `error` answer): nothing was placed.
    Rejected { reason: String },
    /// The order may have been placed: timeout, 5xx, connection lost, unreadable answer.
    Indeterminate { reason: String },
}

impl SendFailure {
    /// True when the order certainly did not land.
    pub fn definitely_not_placed(&self) -> bool {
        !matches!(self, SendFailure::Indeterminate { .. })
    }
}

/// One acknowledged order: `{order_id, order_status, local_order_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OrderAck {
    pub order_id: JsonText,
    #[serde(default)]
    pub order_status: Option<String>,
    /// The cOID the order was sent with.
    #[serde(default)]
    pub local_order_id: Option<JsonText>,
}

/// What `POST /orders` or `POST /reply/{id}` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceReply {
    /// The order (or bracket) was accepted.
    Acks(Vec<OrderAck>),
    /// A confirmation question.
    Question {
        id: String,
        messages: Vec<String>,
        message_ids: Vec<String>,
    },
}

#[derive(Deserialize)]
struct QuestionRow {
    id: JsonText,
    #[serde(default)]
    message: Vec<String>,
    #[serde(default, rename = "messageIds")]
    message_ids: Vec<String>,
}

/// `GET /iserver/account/order/status/{id}` (the fields used).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OrderStatusReply {
    #[serde(default)]
    pub order_id: Option<JsonText>,
    #[serde(default)]
    pub order_status: Option<String>,
    #[serde(default)]
    pub conid: Option<JsonText>,
    #[serde(default)]
    pub symbol: Option<String>,
    #[serde(default)]
    pub side: Option<String>,
    #[serde(default)]
    pub order_type: Option<String>,
    #[serde(default)]
    pub total_size: Option<JsonText>,
    #[serde(default)]
    pub cum_fill: Option<JsonText>,
    #[serde(default)]
    pub average_price: Option<JsonText>,
    #[serde(default)]
    pub limit_price: Option<JsonText>,
    #[serde(default)]
    pub stop_price: Option<JsonText>,
    #[serde(default)]
    pub tif: Option<String>,
}

/// `GET /iserver/account/orders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LiveOrdersReply {
    #[serde(default)]
    pub orders: Vec<LiveOrder>,
    /// `true` once CPGW has the complete list (false or missing on a warm-up answer).
    #[serde(default)]
    pub snapshot: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LiveOrder {
    #[serde(default, rename = "orderId")]
    pub order_id: Option<JsonText>,
    #[serde(default)]
    pub order_ref: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conid: Option<JsonText>,
    #[serde(default)]
    pub ticker: Option<String>,
    #[serde(default)]
    pub side: Option<String>,
    #[serde(default, rename = "orderType")]
    pub order_type: Option<String>,
    #[serde(default, rename = "totalSize")]
    pub total_size: Option<JsonText>,
    #[serde(default, rename = "filledQuantity")]
    pub filled_quantity: Option<JsonText>,
    #[serde(default, rename = "remainingQuantity")]
    pub remaining_quantity: Option<JsonText>,
    #[serde(default, rename = "avgPrice")]
    pub avg_price: Option<JsonText>,
    #[serde(default)]
    pub price: Option<JsonText>,
    #[serde(default, rename = "auxPrice")]
    pub aux_price: Option<JsonText>,
    #[serde(default, rename = "timeInForce")]
    pub tif: Option<String>,
}

/// One row of `GET /iserver/account/trades`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TradeRow {
    #[serde(default)]
    pub execution_id: Option<String>,
    #[serde(default)]
    pub order_id: Option<JsonText>,
    #[serde(default)]
    pub order_ref: Option<String>,
    #[serde(default)]
    pub symbol: Option<String>,
    #[serde(default)]
    pub conid: Option<JsonText>,
    #[serde(default)]
    pub side: Option<String>,
    #[serde(default)]
    pub size: Option<JsonText>,
    #[serde(default)]
    pub price: Option<JsonText>,
    #[serde(default)]
    pub commission: Option<JsonText>,
    #[serde(default)]
    pub trade_time: Option<String>,
    #[serde(default)]
    pub trade_time_r: Option<JsonText>,
}

/// What a cancel answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelReply {
    /// `{"msg": ..., "order_id": ...}`: the request was accepted.
    Accepted { message: Option<String> },
    /// `{"error": ...}` or HTTP 4xx: refused (unknown order, already filled, ...).
    Refused { reason: String },
}

/// What-if answer (amounts kept as CPGW text, parsed by the tool).
pub type WhatIfReply = Value;

fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_LEN)
        .collect();
    if text.chars().count() > MAX_REASON_LEN {
        out.push('…');
    }
    out
}

/// The `error` text of a CPGW error answer, if any.
fn error_text(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let text = match &value {
        Value::Object(map) => map.get("error").or_else(|| map.get("message")),
        Value::Array(rows) => rows
            .first()
            .and_then(|row| row.get("error").or_else(|| row.get("message"))),
        _ => None,
    }?;
    match text {
        Value::String(text) => Some(bounded(text)),
        Value::Array(items) => Some(bounded(
            &items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        )),
        _ => None,
    }
}

/// Parses the answer of `POST /orders` or `POST /reply/{id}`.
pub fn parse_place_reply(bytes: &[u8]) -> Result<PlaceReply, SendFailure> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| SendFailure::Indeterminate {
        reason: "the broker's answer could not be read".into(),
    })?;
    let rows = match &value {
        Value::Array(rows) => rows.clone(),
        Value::Object(map) if map.contains_key("error") => {
            return Err(SendFailure::Rejected {
                reason: error_text(bytes).unwrap_or_default(),
            });
        }
        Value::Object(_) => vec![value.clone()],
        _ => Vec::new(),
    };
    let Some(first) = rows.first() else {
        return Err(SendFailure::Indeterminate {
            reason: "the broker answered with an empty list".into(),
        });
    };
    if first.get("error").is_some() {
        return Err(SendFailure::Rejected {
            reason: error_text(bytes).unwrap_or_default(),
        });
    }
    if first.get("order_id").is_some() {
        let acks: Vec<OrderAck> =
            serde_json::from_value(Value::Array(rows)).map_err(|_| SendFailure::Indeterminate {
                reason: "the broker's acknowledgement could not be read".into(),
            })?;
        return Ok(PlaceReply::Acks(acks));
    }
    if first.get("id").is_some() {
        let question: QuestionRow =
            serde_json::from_value(first.clone()).map_err(|_| SendFailure::Indeterminate {
                reason: "the broker's question could not be read".into(),
            })?;
        return Ok(PlaceReply::Question {
            id: question.id.0,
            messages: question.message.iter().map(|m| bounded(m)).collect(),
            message_ids: question.message_ids,
        });
    }
    Err(SendFailure::Indeterminate {
        reason: "the broker's answer had an unexpected shape".into(),
    })
}

/// A question or reply id as a path segment (IBKR uses UUID-like ids).
fn reply_segment(id: &str) -> Result<&str, SendFailure> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        Ok(id)
    } else {
        Err(SendFailure::NotSent {
            reason: "the broker's question id is not usable".into(),
        })
    }
}

/// An order id as a path segment: digits only.
pub fn order_id_segment(id: &str) -> Option<&str> {
    (!id.is_empty() && id.len() <= 32 && id.bytes().all(|byte| byte.is_ascii_digit())).then_some(id)
}

impl CpgwClient {
    /// Sends one order request with a raw JSON body, paced in `lane`. Returns the HTTP status
    /// and body of a 2xx answer; everything else is classified by whether the request could
    /// have been acted on.
    async fn order_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        lane: Lane,
    ) -> Result<(u16, Vec<u8>), SendFailure> {
        let body = body.map(|text| (text, "application/json"));
        let answer = self
            .exchange(method, path, body, lane, self.request_timeout())
            .await
            .map_err(|failure| match failure {
                RawFailure::Connect => SendFailure::NotSent {
                    reason: "the Client Portal Gateway is not reachable".into(),
                },
                RawFailure::RateLimited => SendFailure::NotSent {
                    reason: "the Client Portal Gateway is pacing this laptop's requests (HTTP 429)"
                        .into(),
                },
                RawFailure::Timeout => SendFailure::Indeterminate {
                    reason: "the Client Portal Gateway did not answer in time".into(),
                },
                RawFailure::Lost => SendFailure::Indeterminate {
                    reason: "the connection to the Client Portal Gateway was lost".into(),
                },
            })?;
        let status = answer.status;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(SendFailure::NotAuthenticated);
        }
        if status.is_client_error() {
            return Err(SendFailure::Rejected {
                reason: error_text(&answer.body)
                    .unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
            });
        }
        if !status.is_success() {
            return Err(SendFailure::Indeterminate {
                reason: format!(
                    "the Client Portal Gateway answered HTTP {}",
                    status.as_u16()
                ),
            });
        }
        if answer.truncated {
            return Err(SendFailure::Indeterminate {
                reason: "the broker's answer was cut off".into(),
            });
        }
        Ok((status.as_u16(), answer.body))
    }

    /// `POST /iserver/account/{acct}/orders` with `body` = `{"orders":[...]}` as JSON text.
    pub async fn place_orders(
        &self,
        account: &str,
        body: String,
    ) -> Result<PlaceReply, SendFailure> {
        let account = path_segment(account).map_err(|_| SendFailure::NotSent {
            reason: "the account id is not usable".into(),
        })?;
        let (_, bytes) = self
            .order_request(
                reqwest::Method::POST,
                &format!("/iserver/account/{account}/orders"),
                Some(body),
                Lane::Trading,
            )
            .await?;
        parse_place_reply(&bytes)
    }

    /// `POST /iserver/reply/{id} {"confirmed": bool}`.
    pub async fn reply(&self, id: &str, confirmed: bool) -> Result<PlaceReply, SendFailure> {
        let id = reply_segment(id)?;
        let (_, bytes) = self
            .order_request(
                reqwest::Method::POST,
                &format!("/iserver/reply/{id}"),
                Some(serde_json::json!({ "confirmed": confirmed }).to_string()),
                Lane::Trading,
            )
            .await?;
        if !confirmed {
            // The answer to a decline does not matter: nothing was placed.
            return Err(SendFailure::NotSent {
                reason: "declined".into(),
            });
        }
        parse_place_reply(&bytes)
    }

    /// `POST /iserver/account/{acct}/orders/whatif` (sends nothing to the market).
    pub async fn whatif(&self, account: &str, body: String) -> Result<WhatIfReply, SendFailure> {
        let account = path_segment(account).map_err(|_| SendFailure::NotSent {
            reason: "the account id is not usable".into(),
        })?;
        let (_, bytes) = self
            .order_request(
                reqwest::Method::POST,
                &format!("/iserver/account/{account}/orders/whatif"),
                Some(body),
                self.read_lane(),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|_| SendFailure::Indeterminate {
            reason: "the broker's answer could not be read".into(),
        })
    }

    /// `GET /iserver/account/order/status/{id}`. `Ok(None)` when CPGW does not know the id.
    /// `lane`: [`Lane::Trading`] when an order decision waits on it, [`Lane::Read`] for polling.
    pub async fn order_status(
        &self,
        order_id: &str,
        lane: Lane,
    ) -> Result<Option<OrderStatusReply>, CpgwError> {
        let id = order_id_segment(order_id).ok_or(CpgwError::Malformed)?;
        match self
            .order_request(
                reqwest::Method::GET,
                &format!("/iserver/account/order/status/{id}"),
                None,
                lane,
            )
            .await
        {
            Ok((_, bytes)) => {
                let value: Value =
                    serde_json::from_slice(&bytes).map_err(|_| CpgwError::Malformed)?;
                if value.get("error").is_some() {
                    return Ok(None);
                }
                serde_json::from_value(value)
                    .map(Some)
                    .map_err(|_| CpgwError::Malformed)
            }
            Err(SendFailure::Rejected { .. }) => Ok(None),
            Err(failure) => Err(read_error(failure)),
        }
    }

    /// `GET /iserver/account/orders?accountId=..`: the broker's list of this session's orders.
    ///
    /// Evidence of presence only. IBKR documents a pre-flight (a new session's first read
    /// answers an empty list while the list fills), the list is scoped to the brokerage session,
    /// and client projects report false-empty and stale answers; `snapshot` is not a
    /// completeness flag. So an order missing from this list is never taken as not placed or
    /// not working. Paced at one read per 6 s: a read that would have to wait is served from
    /// the last answer when that is younger than [`ORDERS_LIST_MAX_AGE`].
    pub async fn live_orders(&self, account: &str) -> Result<LiveOrders, CpgwError> {
        let checked = path_segment(account)?;
        if let Some(cached) = self.orders_cache().fresh(checked, ORDERS_LIST_MAX_AGE)
            && self.pacer().would_wait(Endpoint::OrdersList)
        {
            return Ok(cached);
        }
        self.live_orders_fresh(account).await
    }

    /// [`CpgwClient::live_orders`] read now (waiting for the pacer), never from the cache: for
    /// evidence that must postdate an order (reconciliation).
    pub async fn live_orders_fresh(&self, account: &str) -> Result<LiveOrders, CpgwError> {
        let account = path_segment(account)?;
        let bytes = match self
            .order_request(
                reqwest::Method::GET,
                &format!("/iserver/account/orders?accountId={account}"),
                None,
                self.read_lane(),
            )
            .await
        {
            Ok((_, bytes)) => bytes,
            Err(failure) => return Err(read_error(failure)),
        };
        let reply = parse_live_orders(&bytes)?;
        let list = LiveOrders {
            orders: reply.orders,
            observed_at: tokio::time::Instant::now(),
        };
        self.orders_cache().store(account, list.clone());
        Ok(list)
    }

    /// `DELETE /iserver/account/{acct}/order/{id}`.
    pub async fn cancel_order(
        &self,
        account: &str,
        order_id: &str,
    ) -> Result<CancelReply, SendFailure> {
        let account = path_segment(account).map_err(|_| SendFailure::NotSent {
            reason: "the account id is not usable".into(),
        })?;
        let id = order_id_segment(order_id).ok_or(SendFailure::NotSent {
            reason: "the order id is not usable".into(),
        })?;
        match self
            .order_request(
                reqwest::Method::DELETE,
                &format!("/iserver/account/{account}/order/{id}"),
                None,
                Lane::Trading,
            )
            .await
        {
            Ok((_, bytes)) => Ok(parse_cancel_reply(&bytes)),
            Err(SendFailure::Rejected { reason }) => Ok(CancelReply::Refused { reason }),
            Err(other) => Err(other),
        }
    }

    /// `GET /iserver/account/trades?days=..`: executions of the current New York day and up to
    /// `days - 1` before it (IBKR: at most 7). Like the orders list it needs a pre-flight and
    /// is evidence of presence only.
    pub async fn trades(&self, days: u8) -> Result<Vec<TradeRow>, CpgwError> {
        let days = days.clamp(1, 7);
        match self
            .order_request(
                reqwest::Method::GET,
                &format!("/iserver/account/trades?days={days}"),
                None,
                self.read_lane(),
            )
            .await
        {
            Ok((_, bytes)) => serde_json::from_slice(&bytes).map_err(|_| CpgwError::Malformed),
            Err(failure) => Err(read_error(failure)),
        }
    }
}

/// Parses a cancel acknowledgement: `{"msg", "order_id"}`, `{"error"}`, or a one-row list.
pub fn parse_cancel_reply(bytes: &[u8]) -> CancelReply {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let row = match &value {
        Value::Array(rows) => rows.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    if row.get("error").is_some() {
        return CancelReply::Refused {
            reason: error_text(bytes).unwrap_or_default(),
        };
    }
    if row.get("msg").is_some() || row.get("order_id").is_some() {
        return CancelReply::Accepted {
            message: row.get("msg").and_then(Value::as_str).map(bounded),
        };
    }
    CancelReply::Refused {
        reason: "the broker's answer had an unexpected shape".into(),
    }
}

/// The orders list in its shapes: `{"orders": [...], "snapshot": ..}`, and the bare `[]` or `{}`
/// a pre-flight may answer.
fn parse_live_orders(bytes: &[u8]) -> Result<LiveOrdersReply, CpgwError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| CpgwError::Malformed)?;
    match value {
        Value::Array(rows) if rows.is_empty() => Ok(LiveOrdersReply::default()),
        Value::Object(map) if map.is_empty() => Ok(LiveOrdersReply::default()),
        other => serde_json::from_value(other).map_err(|_| CpgwError::Malformed),
    }
}

/// How old a cached orders list may be when a fresh read would have to wait for the pacer.
pub const ORDERS_LIST_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(6);

/// The orders list as read, and when.
#[derive(Clone, Debug)]
pub struct LiveOrders {
    pub orders: Vec<LiveOrder>,
    pub observed_at: tokio::time::Instant,
}

/// The last orders list read per account.
#[derive(Debug, Default)]
pub struct OrdersListCache {
    last: std::sync::Mutex<Option<(String, LiveOrders)>>,
}

impl OrdersListCache {
    fn fresh(&self, account: &str, max_age: std::time::Duration) -> Option<LiveOrders> {
        let guard = self.last.lock().ok()?;
        let (cached_account, list) = guard.as_ref()?;
        (cached_account == account && list.observed_at.elapsed() < max_age).then(|| list.clone())
    }

    fn store(&self, account: &str, list: LiveOrders) {
        if let Ok(mut guard) = self.last.lock() {
            *guard = Some((account.to_string(), list));
        }
    }
}

fn read_error(failure: SendFailure) -> CpgwError {
    match failure {
        SendFailure::NotAuthenticated => CpgwError::NotAuthenticated,
        SendFailure::NotSent { reason } if reason.contains("429") => CpgwError::RateLimited,
        SendFailure::NotSent { .. } => CpgwError::Unreachable,
        SendFailure::Indeterminate { reason } if reason.contains("in time") => CpgwError::Timeout,
        SendFailure::Indeterminate { .. } => CpgwError::Http(500),
        SendFailure::Rejected { .. } => CpgwError::Http(400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_replies_are_classified() {
        let ack = br#"[{"order_id":"123","order_status":"Submitted","local_order_id":"c1"}]"#;
        match parse_place_reply(ack).unwrap() {
            PlaceReply::Acks(acks) => assert_eq!(acks[0].order_id.as_str(), "123"),
            other => panic!("{other:?}"),
        }
        let question = br#"[{"id":"abc-1","message":["Are you sure?"],"messageIds":["o163"]}]"#;
        assert_eq!(
            parse_place_reply(question).unwrap(),
            PlaceReply::Question {
                id: "abc-1".into(),
                messages: vec!["Are you sure?".into()],
                message_ids: vec!["o163".into()],
            }
        );
        assert!(matches!(
            parse_place_reply(br#"{"error":"no cash qty on sells"}"#),
            Err(SendFailure::Rejected { .. })
        ));
        assert!(matches!(
            parse_place_reply(b"not json"),
            Err(SendFailure::Indeterminate { .. })
        ));
    }

    #[test]
    fn cancel_shapes() {
        assert!(matches!(
            parse_cancel_reply(br#"{"msg":"Request was submitted","order_id":1}"#),
            CancelReply::Accepted { .. }
        ));
        assert!(matches!(
            parse_cancel_reply(br#"{"error":"OrderID 1 doesn't exist"}"#),
            CancelReply::Refused { .. }
        ));
    }
}
