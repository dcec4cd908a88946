//! TEMPORARY STUB (replaced by the real module).
pub use crate::policy::matcher::Family;
use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Icmp,
    Tcp(u16),
}
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    pub gateway: String,
    pub family: Family,
    pub dev: String,
    pub mark: u32,
    pub targets: Vec<IpAddr>,
    pub method: Method,
    pub interval: Duration,
    pub timeout: Duration,
    pub count: u32,
    pub down: u32,
    pub up: u32,
}
#[derive(Clone, Debug)]
pub struct Transition {
    pub gateway: String,
    pub family: Family,
    pub up: bool,
    pub at: SystemTime,
    pub reason: String,
}
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub gateway: String,
    pub family: Family,
    pub up: bool,
    pub since: u64,
    pub loss_percent: f64,
    pub rtt_ms: Option<f64>,
    pub rounds: u64,
    pub transitions: u64,
}
pub struct Monitor;
impl Monitor {
    pub fn start(
        _specs: Vec<CheckSpec>,
        _tx: tokio::sync::mpsc::UnboundedSender<Transition>,
    ) -> Monitor {
        Monitor
    }
    pub fn replace(&mut self, _specs: Vec<CheckSpec>) {}
    pub fn reports(&self) -> Vec<CheckReport> {
        Vec::new()
    }
    pub fn is_up(&self, _g: &str, _f: Family) -> Option<bool> {
        None
    }
}
