//! From tool arguments to guard intents, and from intents to the exact CPGW order JSON.
//!
//! Price conventions (CPGW): LMT `price`; STP `price` = trigger (never `auxPrice`);
//! STOP_LIMIT `price` = limit and `auxPrice` = trigger; TRAIL `trailingAmt` + `trailingType`
//! (`amt` or `%`); bracket children carry `parentId` = the parent's `cOID` and no `cOID` of their
//! own (IBKR: "Please do not set this value for child orders when placing a bracket order");
//! `cashQty` only on market buys. Numbers are written from their exact decimal text, never
//! through `f64`.

use protocol::envelope::Outcome;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shared_safety::ErrorCode;
use shared_safety::guards::{OrderIntent, OrderIntentRole, OrderKind, Side, Tif};
use shared_safety::money::{Decimal, parse_positive, to_decimal_string};
use std::collections::BTreeMap;

/// One order of a ticket (a bracket has three).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    /// `order`, `entry`, `take_profit` or `stop_loss`.
    pub label: &'static str,
    pub intent: OrderIntent,
    /// The client order id (`cOID`); `None` on bracket children.
    pub coid: Option<String>,
    pub parent_coid: Option<String>,
}

impl Leg {
    fn new(label: &'static str, intent: OrderIntent) -> Leg {
        Leg {
            label,
            intent,
            coid: None,
            parent_coid: None,
        }
    }

    /// Whether this leg is a bracket child (a take-profit or stop-loss).
    pub fn is_child(&self) -> bool {
        matches!(self.label, "take_profit" | "stop_loss")
    }
}

/// Gives the legs their client order ids: the parent (or single order) `coid`, the children
/// none and `parentId` = `coid`.
pub fn assign_coids(legs: &mut [Leg], coid: &str) {
    for leg in legs.iter_mut() {
        if leg.is_child() {
            leg.coid = None;
            leg.parent_coid = Some(coid.to_string());
        } else {
            leg.coid = Some(coid.to_string());
            leg.parent_coid = None;
        }
    }
}

/// The legs of a placing tool (client order ids come later: [`assign_coids`]). `held` is the
/// signed position, needed by `ibkr_close_position` only.
pub fn legs_for(
    tool: &str,
    symbol: &str,
    arguments: &Map<String, Value>,
    held: Option<Decimal>,
) -> Result<Vec<Leg>, Outcome> {
    match tool {
        "ibkr_buy" => {
            let quantity = decimal_arg(arguments, "quantity")?;
            let cash = decimal_arg(arguments, "cash_amount")?;
            let limit = decimal_arg(arguments, "limit_price")?;
            if cash.is_some() && limit.is_some() {
                return Err(invalid(
                    "(cash_amount buys are market orders only; use quantity with limit_price)",
                ));
            }
            let mut buy = intent(
                symbol,
                Side::Buy,
                if limit.is_some() {
                    OrderKind::Limit
                } else {
                    OrderKind::Market
                },
                OrderIntentRole::Entry,
                tif_arg(arguments, Tif::Day)?,
            );
            buy.quantity = quantity;
            buy.cash_amount = cash;
            buy.limit_price = limit;
            Ok(vec![Leg::new("order", buy)])
        }
        "ibkr_sell" => {
            let limit = decimal_arg(arguments, "limit_price")?;
            let mut sell = intent(
                symbol,
                Side::Sell,
                if limit.is_some() {
                    OrderKind::Limit
                } else {
                    OrderKind::Market
                },
                OrderIntentRole::Exit,
                tif_arg(arguments, Tif::Day)?,
            );
            sell.quantity = decimal_arg(arguments, "quantity")?;
            sell.limit_price = limit;
            Ok(vec![Leg::new("order", sell)])
        }
        "ibkr_close_position" => {
            let held = held.unwrap_or(Decimal::ZERO);
            if held.is_zero() {
                return Err(Outcome::Refused(ErrorCode::PositionNotFound.body(None)));
            }
            let side = if held > Decimal::ZERO {
                Side::Sell
            } else {
                Side::Buy
            };
            let mut close = intent(
                symbol,
                side,
                OrderKind::Market,
                OrderIntentRole::Exit,
                Tif::Day,
            );
            close.quantity = Some(held.abs());
            Ok(vec![Leg::new("order", close)])
        }
        "ibkr_stop_order" => {
            let limit = decimal_arg(arguments, "limit_price")?;
            let mut stop = intent(
                symbol,
                side_arg(arguments)?,
                if limit.is_some() {
                    OrderKind::StopLimit
                } else {
                    OrderKind::Stop
                },
                OrderIntentRole::Protective,
                tif_arg(arguments, Tif::Gtc)?,
            );
            stop.quantity = decimal_arg(arguments, "quantity")?;
            stop.stop_price = decimal_arg(arguments, "stop_price")?;
            stop.limit_price = limit;
            Ok(vec![Leg::new("order", stop)])
        }
        "ibkr_trailing_stop" => {
            let mut trail = intent(
                symbol,
                side_arg(arguments)?,
                OrderKind::TrailingStop,
                OrderIntentRole::Protective,
                tif_arg(arguments, Tif::Gtc)?,
            );
            trail.quantity = decimal_arg(arguments, "quantity")?;
            trail.trail_amount = decimal_arg(arguments, "trail_amount")?;
            trail.trail_percent = decimal_arg(arguments, "trail_percent")?;
            Ok(vec![Leg::new("order", trail)])
        }
        "ibkr_bracket_order" => {
            let quantity = decimal_arg(arguments, "quantity")?;
            let entry_limit = decimal_arg(arguments, "entry_limit_price")?;
            let exits_tif = tif_arg(arguments, Tif::Gtc)?;
            let mut entry = intent(
                symbol,
                Side::Buy,
                if entry_limit.is_some() {
                    OrderKind::Limit
                } else {
                    OrderKind::Market
                },
                OrderIntentRole::Entry,
                Tif::Day,
            );
            entry.quantity = quantity;
            entry.limit_price = entry_limit;
            let mut take_profit = intent(
                symbol,
                Side::Sell,
                OrderKind::Limit,
                OrderIntentRole::Exit,
                exits_tif,
            );
            take_profit.quantity = quantity;
            take_profit.limit_price = decimal_arg(arguments, "take_profit")?;
            let mut stop_loss = intent(
                symbol,
                Side::Sell,
                OrderKind::Stop,
                OrderIntentRole::Protective,
                exits_tif,
            );
            stop_loss.quantity = quantity;
            stop_loss.stop_price = decimal_arg(arguments, "stop_loss")?;
            Ok(vec![
                Leg::new("entry", entry),
                Leg::new("take_profit", take_profit),
                Leg::new("stop_loss", stop_loss),
            ])
        }
        _ => Err(Outcome::Refused(ErrorCode::ToolUnknown.body(None))),
    }
}

/// What an idempotency key binds: the tool and its arguments, the key itself left out, as a
/// domain-separated hash of their canonical JSON.
pub fn request_hash(tool: &str, arguments: &Map<String, Value>) -> String {
    let mut bound = arguments.clone();
    bound.remove("idempotency_key");
    let canonical = protocol::canonical::canonicalize(&Value::Object(bound)).unwrap_or_default();
    hex::encode(protocol::canonical::payload_hash(tool, &canonical))
}

pub(crate) fn invalid(detail: impl AsRef<str>) -> Outcome {
    Outcome::Refused(ErrorCode::OrderInvalid.body(Some(detail.as_ref())))
}

/// An optional positive decimal argument.
pub fn decimal_arg(arguments: &Map<String, Value>, key: &str) -> Result<Option<Decimal>, Outcome> {
    match arguments.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => parse_positive(value, key)
            .map(Some)
            .map_err(|error| Outcome::Refused(error.code().body(Some(&error.detail())))),
    }
}

pub fn text_arg<'a>(arguments: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    arguments.get(key).and_then(Value::as_str)
}

pub fn side_arg(arguments: &Map<String, Value>) -> Result<Side, Outcome> {
    match text_arg(arguments, "side") {
        Some("BUY") => Ok(Side::Buy),
        Some("SELL") => Ok(Side::Sell),
        _ => Err(invalid("(side must be BUY or SELL)")),
    }
}

pub fn tif_arg(arguments: &Map<String, Value>, default: Tif) -> Result<Tif, Outcome> {
    match text_arg(arguments, "tif") {
        None => Ok(default),
        Some("DAY") => Ok(Tif::Day),
        Some("GTC") => Ok(Tif::Gtc),
        Some(_) => Err(invalid("(tif must be DAY or GTC)")),
    }
}

/// A blank intent for `symbol`.
pub fn intent(
    symbol: &str,
    side: Side,
    kind: OrderKind,
    role: OrderIntentRole,
    tif: Tif,
) -> OrderIntent {
    OrderIntent {
        symbol: symbol.to_string(),
        side,
        kind,
        role,
        quantity: None,
        cash_amount: None,
        limit_price: None,
        stop_price: None,
        trail_amount: None,
        trail_percent: None,
        tif,
    }
}

fn raw(value: Decimal) -> Result<Box<RawValue>, Outcome> {
    RawValue::from_string(to_decimal_string(value))
        .map_err(|_| Outcome::Failed(ErrorCode::InternalError.body(None)))
}

fn raw_text(value: &str) -> Result<Box<RawValue>, Outcome> {
    serde_json::to_string(value)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .ok_or_else(|| Outcome::Failed(ErrorCode::InternalError.body(None)))
}

/// One CPGW order object as exact JSON text.
pub fn order_object(conid: i64, leg: &Leg) -> Result<Box<RawValue>, Outcome> {
    let intent = &leg.intent;
    let mut fields: BTreeMap<&str, Box<RawValue>> = BTreeMap::new();
    fields.insert(
        "conid",
        RawValue::from_string(conid.to_string())
            .map_err(|_| Outcome::Failed(ErrorCode::InternalError.body(None)))?,
    );
    fields.insert("orderType", raw_text(intent.kind.as_ibkr())?);
    fields.insert("side", raw_text(intent.side.as_ibkr())?);
    fields.insert("tif", raw_text(intent.tif.as_ibkr())?);
    if let Some(coid) = &leg.coid {
        fields.insert("cOID", raw_text(coid)?);
    }
    if let Some(parent) = &leg.parent_coid {
        fields.insert("parentId", raw_text(parent)?);
    }
    match (intent.cash_amount, intent.quantity) {
        (Some(cash), None) if intent.side == Side::Buy && intent.kind == OrderKind::Market => {
            fields.insert("cashQty", raw(cash)?);
        }
        (None, Some(quantity)) => {
            fields.insert("quantity", raw(quantity)?);
        }
        _ => {
            return Err(invalid(
                "(give exactly one of quantity or cash_amount; cash_amount only on market buys)",
            ));
        }
    }
    match intent.kind {
        OrderKind::Market => {}
        OrderKind::Limit => {
            let price = intent
                .limit_price
                .ok_or_else(|| invalid("(a limit order needs limit_price)"))?;
            fields.insert("price", raw(price)?);
        }
        OrderKind::Stop => {
            // STP: `price` is the trigger; CPGW rejects `auxPrice` on a plain stop.
            let trigger = intent
                .stop_price
                .ok_or_else(|| invalid("(a stop order needs stop_price)"))?;
            fields.insert("price", raw(trigger)?);
        }
        OrderKind::StopLimit => {
            let limit = intent
                .limit_price
                .ok_or_else(|| invalid("(a stop-limit order needs limit_price)"))?;
            let trigger = intent
                .stop_price
                .ok_or_else(|| invalid("(a stop-limit order needs stop_price)"))?;
            fields.insert("price", raw(limit)?);
            fields.insert("auxPrice", raw(trigger)?);
        }
        OrderKind::TrailingStop => match (intent.trail_amount, intent.trail_percent) {
            (Some(amount), None) => {
                fields.insert("trailingAmt", raw(amount)?);
                fields.insert("trailingType", raw_text("amt")?);
            }
            (None, Some(percent)) => {
                fields.insert("trailingAmt", raw(percent)?);
                fields.insert("trailingType", raw_text("%")?);
            }
            _ => {
                return Err(invalid(
                    "(give exactly one of trail_amount or trail_percent)",
                ));
            }
        },
    }
    let text = serde_json::to_string(&fields)
        .map_err(|_| Outcome::Failed(ErrorCode::InternalError.body(None)))?;
    RawValue::from_string(text).map_err(|_| Outcome::Failed(ErrorCode::InternalError.body(None)))
}

/// `{"orders":[...]}` as exact JSON text.
pub fn orders_body(conid: i64, legs: &[Leg]) -> Result<String, Outcome> {
    let mut objects = Vec::with_capacity(legs.len());
    for leg in legs {
        objects.push(order_object(conid, leg)?);
    }
    let mut body: BTreeMap<&str, Vec<Box<RawValue>>> = BTreeMap::new();
    body.insert("orders", objects);
    serde_json::to_string(&body).map_err(|_| Outcome::Failed(ErrorCode::InternalError.body(None)))
}

/// An intent as journal/result JSON (decimal strings).
pub fn intent_json(intent: &OrderIntent) -> Value {
    let d =
        |value: Option<Decimal>| value.map_or(Value::Null, |v| Value::String(to_decimal_string(v)));
    serde_json::json!({
        "symbol": intent.symbol,
        "side": intent.side.as_ibkr(),
        "order_type": intent.kind.as_ibkr(),
        "role": match intent.role {
            OrderIntentRole::Entry => "entry",
            OrderIntentRole::Exit => "exit",
            OrderIntentRole::Protective => "protective",
            OrderIntentRole::Cancel => "cancel",
        },
        "tif": intent.tif.as_ibkr(),
        "quantity": d(intent.quantity),
        "cash_amount": d(intent.cash_amount),
        "limit_price": d(intent.limit_price),
        "stop_price": d(intent.stop_price),
        "trail_amount": d(intent.trail_amount),
        "trail_percent": d(intent.trail_percent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(intent: OrderIntent) -> Leg {
        Leg {
            label: "order",
            intent,
            coid: Some("ia-1".into()),
            parent_coid: None,
        }
    }

    #[test]
    fn bracket_children_carry_the_parent_id_and_no_client_order_id_of_their_own() {
        let arguments: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "symbol": "AAPL", "quantity": "2", "entry_limit_price": "10",
            "take_profit": "11", "stop_loss": "9"}))
        .unwrap();
        let mut legs = legs_for("ibkr_bracket_order", "AAPL", &arguments, None).unwrap();
        assign_coids(&mut legs, "ia-parent");
        let body: Value = serde_json::from_str(&orders_body(1, &legs).unwrap()).unwrap();
        let orders = body["orders"].as_array().unwrap();
        assert_eq!(orders[0]["cOID"], "ia-parent");
        assert!(orders[0].get("parentId").is_none());
        for child in &orders[1..] {
            assert!(child.get("cOID").is_none(), "{child}");
            assert_eq!(child["parentId"], "ia-parent");
        }
    }

    #[test]
    fn the_request_hash_binds_tool_and_arguments_but_not_the_key() {
        let args = |json: Value| -> Map<String, Value> { serde_json::from_value(json).unwrap() };
        let a = request_hash(
            "ibkr_buy",
            &args(serde_json::json!({"symbol": "AAPL", "quantity": "1", "idempotency_key": "k"})),
        );
        let b = request_hash(
            "ibkr_buy",
            &args(serde_json::json!({"quantity": "1", "symbol": "AAPL", "idempotency_key": "z"})),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            request_hash(
                "ibkr_sell",
                &args(serde_json::json!({"symbol": "AAPL", "quantity": "1"}))
            )
        );
        assert_ne!(
            a,
            request_hash(
                "ibkr_buy",
                &args(serde_json::json!({"symbol": "AAPL", "quantity": "2"}))
            )
        );
    }

    #[test]
    fn price_conventions() {
        let mut stop = intent(
            "AAPL",
            Side::Sell,
            OrderKind::Stop,
            OrderIntentRole::Protective,
            Tif::Gtc,
        );
        stop.quantity = Some(Decimal::new(15, 1));
        stop.stop_price = Some(Decimal::new(18050, 2));
        let text = order_object(265598, &leg(stop.clone()))
            .unwrap()
            .get()
            .to_string();
        assert_eq!(
            text,
            r#"{"cOID":"ia-1","conid":265598,"orderType":"STP","price":180.5,"quantity":1.5,"side":"SELL","tif":"GTC"}"#
        );
        let mut stop_limit = stop.clone();
        stop_limit.kind = OrderKind::StopLimit;
        stop_limit.limit_price = Some(Decimal::from(180));
        let text = order_object(1, &leg(stop_limit)).unwrap().get().to_string();
        assert!(text.contains(r#""auxPrice":180.5"#) && text.contains(r#""price":180"#));
        let mut trail = stop;
        trail.kind = OrderKind::TrailingStop;
        trail.stop_price = None;
        trail.trail_percent = Some(Decimal::from(2));
        let text = order_object(1, &leg(trail)).unwrap().get().to_string();
        assert!(text.contains(r#""trailingAmt":2"#) && text.contains(r#""trailingType":"%""#));
        let mut cash = intent(
            "AAPL",
            Side::Buy,
            OrderKind::Market,
            OrderIntentRole::Entry,
            Tif::Day,
        );
        cash.cash_amount = Some(Decimal::new(5, 0));
        let text = order_object(1, &leg(cash.clone()))
            .unwrap()
            .get()
            .to_string();
        assert!(text.contains(r#""cashQty":5"#) && !text.contains("quantity"));
        cash.side = Side::Sell;
        assert!(order_object(1, &leg(cash)).is_err());
    }
}
