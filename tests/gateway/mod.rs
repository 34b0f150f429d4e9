//! Fixtures of the gateway's integration tests: a private system bus with polkitd, a granted
//! test user, and the HTTP gateway in-process over a real cache driven with curl.
#![allow(dead_code)]

pub mod http;
pub mod polkit;
