//! Order tickets as CPGW accepts them, with IBKR's validation rules, and the
//! public records tests read back.

use std::fmt;

use rust_decimal::Decimal;
use serde_json::Value;

use super::market::Market;
use super::state::SimAccount;
use super::wire::decimal_field;

/// Order states as CPGW spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimOrderStatus {
    /// Sent, not yet acknowledged by the destination.
    PendingSubmit,
    /// Accepted and held by IBKR: stop and trailing orders waiting for their
    /// trigger, bracket children waiting for their parent, orders parked
    /// until the market opens.
    PreSubmitted,
    /// Working at the destination (possibly partially filled).
    Submitted,
    /// A cancel was requested and not yet confirmed.
    PendingCancel,
    /// Completely filled.
    Filled,
    /// Cancelled (by the user, or as the other side of an OCO pair).
    Cancelled,
    /// Cancelled through the API.
    ApiCancelled,
    /// Not working: dead or parked.
    Inactive,
}

impl SimOrderStatus {
    /// The status string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SimOrderStatus::PendingSubmit => "PendingSubmit",
            SimOrderStatus::PreSubmitted => "PreSubmitted",
            SimOrderStatus::Submitted => "Submitted",
            SimOrderStatus::PendingCancel => "PendingCancel",
            SimOrderStatus::Filled => "Filled",
            SimOrderStatus::Cancelled => "Cancelled",
            SimOrderStatus::ApiCancelled => "ApiCancelled",
            SimOrderStatus::Inactive => "Inactive",
        }
    }

    /// Filled or cancelled: nothing more can happen to the order.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SimOrderStatus::Filled | SimOrderStatus::Cancelled | SimOrderStatus::ApiCancelled
        )
    }

    /// `order_ccp_status` of `/order/status`.
    pub(crate) fn ccp_status(self) -> &'static str {
        match self {
            SimOrderStatus::Inactive | SimOrderStatus::PendingSubmit => "Pending Submit",
            SimOrderStatus::PendingCancel => "Pending Cancel",
            other => other.as_str(),
        }
    }

    /// `order_status_description` of `/order/status`.
    pub(crate) fn description(self) -> &'static str {
        match self {
            SimOrderStatus::PendingSubmit => "Order Submission Pending",
            SimOrderStatus::PreSubmitted => "Order Submitted",
            SimOrderStatus::Submitted => "Order Submitted",
            SimOrderStatus::PendingCancel => "Order Cancel Pending",
            SimOrderStatus::Filled => "Order Filled",
            SimOrderStatus::Cancelled | SimOrderStatus::ApiCancelled => "Order Cancelled",
            SimOrderStatus::Inactive => "Order Inactive",
        }
    }
}

impl fmt::Display for SimOrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An order the simulator accepted, as tests see it. Decimals are strings
/// exactly as the order carried them (`"0.1234"` stays `"0.1234"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOrder {
    /// IBKR order id (`order_id` of the ack).
    pub order_id: String,
    /// Account the order was placed for.
    pub account: String,
    /// Contract id.
    pub conid: i64,
    /// Ticker of the contract.
    pub symbol: String,
    /// `BUY` or `SELL`.
    pub side: String,
    /// `MKT`, `LMT`, `STP`, `STOP_LIMIT` or `TRAIL`, as sent.
    pub order_type: String,
    /// `DAY`, `GTC`, ...
    pub tif: String,
    /// `quantity` as sent.
    pub quantity: Option<String>,
    /// `cashQty` as sent.
    pub cash_qty: Option<String>,
    /// `price` as sent.
    pub price: Option<String>,
    /// `auxPrice` as sent.
    pub aux_price: Option<String>,
    /// `trailingAmt` as sent.
    pub trailing_amt: Option<String>,
    /// `trailingType` as sent (`amt` or `%`).
    pub trailing_type: Option<String>,
    /// `cOID` (client order id) as sent.
    pub c_oid: Option<String>,
    /// `parentId` as sent: the parent's `cOID`.
    pub parent_id: Option<String>,
    /// `outsideRTH` as sent.
    pub outside_rth: bool,
    /// Current status.
    pub status: SimOrderStatus,
    /// Filled quantity so far.
    pub filled_quantity: String,
    /// Average fill price, once something filled.
    pub avg_price: Option<String>,
}

/// One execution (a fill or a slice of a fill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimExecution {
    /// `execution_id` on the wire.
    pub execution_id: String,
    /// The order it belongs to.
    pub order_id: String,
    /// Contract id.
    pub conid: i64,
    /// Ticker.
    pub symbol: String,
    /// `BUY` or `SELL`.
    pub side: String,
    /// Executed quantity.
    pub quantity: Decimal,
    /// Execution price.
    pub price: Decimal,
    /// Commission charged, in the contract's currency.
    pub commission: Decimal,
    /// `cOID` of the order, if it had one.
    pub order_ref: Option<String>,
    /// Epoch milliseconds.
    pub time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Buy,
    Sell,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    /// `B`/`S`, as `/order/status` and `/trades` spell sides.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Side::Buy => "B",
            Side::Sell => "S",
        }
    }

    pub(crate) fn verb(self, done: bool) -> &'static str {
        match (self, done) {
            (Side::Buy, false) => "Buy",
            (Side::Buy, true) => "Bought",
            (Side::Sell, false) => "Sell",
            (Side::Sell, true) => "Sold",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OrderType {
    Market,
    Limit,
    Stop,
    StopLimit,
    Trail,
}

impl OrderType {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "MKT" => Some(OrderType::Market),
            "LMT" => Some(OrderType::Limit),
            "STP" => Some(OrderType::Stop),
            "STOP_LIMIT" => Some(OrderType::StopLimit),
            "TRAIL" => Some(OrderType::Trail),
            _ => None,
        }
    }

    /// As sent in a ticket.
    pub(crate) fn wire(self) -> &'static str {
        match self {
            OrderType::Market => "MKT",
            OrderType::Limit => "LMT",
            OrderType::Stop => "STP",
            OrderType::StopLimit => "STOP_LIMIT",
            OrderType::Trail => "TRAIL",
        }
    }

    /// `order_type` of `/order/status` and `origOrderType` of `/orders`.
    pub(crate) fn status_name(self) -> &'static str {
        match self {
            OrderType::Market => "MARKET",
            OrderType::Limit => "LIMIT",
            OrderType::Stop => "STOP",
            OrderType::StopLimit => "STOP_LIMIT",
            OrderType::Trail => "TRAILING_STOP",
        }
    }

    /// `orderType` of `/orders` rows.
    pub(crate) fn list_name(self) -> &'static str {
        match self {
            OrderType::Market => "Market",
            OrderType::Limit => "Limit",
            OrderType::Stop => "Stop",
            OrderType::StopLimit => "Stop Limit",
            OrderType::Trail => "Trail",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrailKind {
    Amount,
    Percent,
}

impl TrailKind {
    pub(crate) fn wire(self) -> &'static str {
        match self {
            TrailKind::Amount => "amt",
            TrailKind::Percent => "%",
        }
    }
}

/// One validated entry of `{"orders":[...]}`.
#[derive(Clone, Debug)]
pub(crate) struct OrderTicket {
    pub(crate) conid: i64,
    pub(crate) side: Side,
    pub(crate) order_type: OrderType,
    pub(crate) tif: String,
    pub(crate) quantity: Option<Decimal>,
    pub(crate) cash_qty: Option<Decimal>,
    pub(crate) price: Option<Decimal>,
    pub(crate) aux_price: Option<Decimal>,
    pub(crate) trailing_amt: Option<Decimal>,
    pub(crate) trailing_type: Option<TrailKind>,
    pub(crate) c_oid: Option<String>,
    pub(crate) parent_c_oid: Option<String>,
    pub(crate) outside_rth: bool,
}

/// Largest quantity, price and cash amount accepted; keeps every product in
/// the simulator far away from decimal overflow.
const MAX_QUANTITY: i64 = 1_000_000_000;
const MAX_PRICE: i64 = 10_000_000;
const MAX_CASH: i64 = 10_000_000_000;
/// IBKR trades fractions to four decimals.
const MAX_QUANTITY_DP: u32 = 4;
const MAX_PRICE_DP: u32 = 4;

/// The text of a reused `cOID`: ibind (`handle_questions`) and other client
/// projects match on "Order couldn't be submitted: Local order ID=".
pub(crate) fn coid_taken(c_oid: &str) -> String {
    format!("Order couldn't be submitted: Local order ID={c_oid} is already registered.")
}

/// TWS API message 110, which IBKR also returns for Client Portal orders.
pub(crate) const OFF_TICK: &str =
    "The price does not conform to the minimum price variation for this contract.";

/// The tick of an instrument trading at `price`: US stocks trade in cents
/// from USD 1.00 and in hundredths of a cent below (SEC Reg NMS Rule 612).
/// Other listings are held to cents as well (their exchanges' tick tables
/// are not modelled).
pub(crate) fn tick_at(price: Decimal, is_us: bool) -> Decimal {
    if is_us && price < Decimal::ONE {
        Decimal::new(1, 4)
    } else {
        Decimal::new(1, 2)
    }
}

/// Parses and validates the `orders` array of a submission, all or nothing.
pub(crate) fn parse_tickets(
    body: &[u8],
    account: &SimAccount,
    market: &Market,
    reject_child_coid: bool,
) -> Result<Vec<OrderTicket>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "request body is not valid JSON".to_owned())?;
    let orders = value
        .get("orders")
        .and_then(Value::as_array)
        .ok_or_else(|| "body must be {\"orders\":[...]}".to_owned())?;
    if orders.is_empty() {
        return Err("orders must not be empty".to_owned());
    }
    let tickets = orders
        .iter()
        .map(|order| parse_ticket(order, account, market))
        .collect::<Result<Vec<_>, _>>()?;
    for (index, ticket) in tickets.iter().enumerate() {
        if let Some(c_oid) = &ticket.c_oid
            && tickets
                .iter()
                .take(index)
                .any(|earlier| earlier.c_oid.as_ref() == Some(c_oid))
        {
            return Err(coid_taken(c_oid));
        }
        // IBKR's order reference for `cOID`: "Please do not set this value
        // for child orders when placing a bracket order." The text of the
        // refusal is not from a source.
        if reject_child_coid && ticket.parent_c_oid.is_some() && ticket.c_oid.is_some() {
            return Err(
                "cOID must not be set on child orders when placing a bracket order; the child's parentId carries the parent's cOID"
                    .to_owned(),
            );
        }
    }
    Ok(tickets)
}

fn string_field<'a>(order: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match order.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn parse_conid(order: &Value) -> Result<i64, String> {
    let from_text = |text: &str| -> Result<i64, String> {
        let head = text.split(['@', ':']).next().unwrap_or_default();
        head.trim()
            .parse::<i64>()
            .map_err(|_| format!("invalid conid {text}"))
    };
    match order.get("conid") {
        Some(Value::Number(number)) => number
            .as_i64()
            .ok_or_else(|| "conid must be an integer".to_owned()),
        Some(Value::String(text)) => from_text(text),
        Some(_) => Err("conid must be an integer".to_owned()),
        None => match string_field(order, "conidex")? {
            Some(text) => from_text(text),
            None => Err("conid is required".to_owned()),
        },
    }
}

fn positive(
    value: Option<Decimal>,
    key: &str,
    max: i64,
    max_dp: u32,
) -> Result<Option<Decimal>, String> {
    match value {
        None => Ok(None),
        Some(number) if number <= Decimal::ZERO => Err(format!("{key} must be positive")),
        Some(number) if number > Decimal::from(max) => Err(format!("{key} is too large")),
        Some(number) if number.normalize().scale() > max_dp => {
            Err(format!("{key} has more than {max_dp} decimals"))
        }
        Some(number) => Ok(Some(number)),
    }
}

fn parse_ticket(
    order: &Value,
    account: &SimAccount,
    market: &Market,
) -> Result<OrderTicket, String> {
    if !order.is_object() {
        return Err("each order must be an object".to_owned());
    }
    if let Some(acct) = string_field(order, "acctId")?
        && acct != account.account_id
    {
        return Err(format!("Account {acct} is not valid for this session"));
    }
    let conid = parse_conid(order)?;
    let listing = market
        .by_conid(conid)
        .ok_or_else(|| format!("No contract found for conid {conid}"))?;
    let side = match string_field(order, "side")? {
        Some("BUY") => Side::Buy,
        Some("SELL") => Side::Sell,
        Some(other) => return Err(format!("invalid side {other}")),
        None => return Err("side is required".to_owned()),
    };
    let order_type_text =
        string_field(order, "orderType")?.ok_or_else(|| "orderType is required".to_owned())?;
    let order_type = OrderType::parse(order_type_text)
        .ok_or_else(|| format!("invalid orderType {order_type_text}"))?;
    let tif = match string_field(order, "tif")? {
        Some(tif @ ("DAY" | "GTC" | "IOC" | "OPG")) => tif.to_owned(),
        Some(other) => return Err(format!("invalid tif {other}")),
        None => return Err("tif is required".to_owned()),
    };
    let quantity = positive(
        decimal_field(order, "quantity")?,
        "quantity",
        MAX_QUANTITY,
        MAX_QUANTITY_DP,
    )?;
    let cash_qty = positive(decimal_field(order, "cashQty")?, "cashQty", MAX_CASH, 2)?;
    let price = positive(
        decimal_field(order, "price")?,
        "price",
        MAX_PRICE,
        MAX_PRICE_DP,
    )?;
    let aux_price = positive(
        decimal_field(order, "auxPrice")?,
        "auxPrice",
        MAX_PRICE,
        MAX_PRICE_DP,
    )?;
    let trailing_amt = positive(
        decimal_field(order, "trailingAmt")?,
        "trailingAmt",
        MAX_PRICE,
        MAX_PRICE_DP,
    )?;
    let trailing_type = match string_field(order, "trailingType")? {
        None => None,
        Some("amt") => Some(TrailKind::Amount),
        Some("%") => Some(TrailKind::Percent),
        Some(other) => return Err(format!("invalid trailingType {other}")),
    };
    let c_oid = string_field(order, "cOID")?.map(str::to_owned);
    if c_oid.as_deref().is_some_and(str::is_empty) {
        return Err("cOID must not be empty".to_owned());
    }
    let parent_c_oid = match order.get("parentId") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(_) => return Err("parentId must be a string".to_owned()),
    };
    let outside_rth = match order.get("outsideRTH") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err("outsideRTH must be a boolean".to_owned()),
    };

    match (quantity, cash_qty) {
        (None, None) => return Err("quantity or cashQty is required".to_owned()),
        (Some(_), Some(_)) => {
            return Err("quantity and cashQty cannot be used together".to_owned());
        }
        _ => {}
    }
    if cash_qty.is_some() {
        // Live rejection text (pedrobraiti/mcp-ibkr-agent DECISIONS.md ADR-007).
        if side == Side::Sell {
            return Err("Cash order quantity can not be set for sell order".to_owned());
        }
        if !account.supports_cash_qty {
            return Err("This account does not support cash quantity orders".to_owned());
        }
        if !matches!(order_type, OrderType::Market | OrderType::Limit) {
            return Err("Cash quantity is only supported for MKT and LMT orders".to_owned());
        }
    }
    let fractional = cash_qty.is_some() || quantity.is_some_and(|q| !q.fract().is_zero());
    if fractional {
        if !account.supports_fractions && quantity.is_some() {
            return Err("This account does not support fractional shares".to_owned());
        }
        if !listing.instrument.is_us {
            return Err(format!(
                "Fractional and cash quantity orders are not supported for {} on {}",
                listing.instrument.symbol, listing.instrument.exchange
            ));
        }
    }
    match order_type {
        OrderType::Market => {}
        OrderType::Limit => {
            if price.is_none() {
                return Err("price is required for LMT orders".to_owned());
            }
        }
        OrderType::Stop => {
            // Live rejection text (reference server DECISIONS.md ADR-011).
            if aux_price.is_some() {
                return Err("Invalid order price fields".to_owned());
            }
            if price.is_none() {
                return Err("price (the stop trigger) is required for STP orders".to_owned());
            }
        }
        OrderType::StopLimit => {
            if price.is_none() || aux_price.is_none() {
                return Err(
                    "STOP_LIMIT orders need price (limit) and auxPrice (stop trigger)".to_owned(),
                );
            }
        }
        OrderType::Trail => {
            if trailing_amt.is_none() || trailing_type.is_none() {
                return Err("TRAIL orders need trailingAmt and trailingType".to_owned());
            }
            if trailing_type == Some(TrailKind::Percent)
                && trailing_amt.is_some_and(|amount| amount >= Decimal::ONE_HUNDRED)
            {
                return Err("trailingAmt must be below 100 percent".to_owned());
            }
        }
    }
    // Prices sit on the tick of their own level; a trailing amount on the
    // tick of the price it trails.
    let is_us = listing.instrument.is_us;
    let tick_checked = [
        price.map(|p| (p, tick_at(p, is_us))),
        aux_price.map(|p| (p, tick_at(p, is_us))),
        trailing_amt
            .filter(|_| trailing_type == Some(TrailKind::Amount))
            .map(|amount| (amount, tick_at(listing.quote.last, is_us))),
    ];
    for (value, tick) in tick_checked.into_iter().flatten() {
        if !(value % tick).is_zero() {
            return Err(OFF_TICK.to_owned());
        }
    }
    Ok(OrderTicket {
        conid,
        side,
        order_type,
        tif,
        quantity,
        cash_qty,
        price,
        aux_price,
        trailing_amt,
        trailing_type,
        c_oid,
        parent_c_oid,
        outside_rth,
    })
}
