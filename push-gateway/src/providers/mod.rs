//! One client per provider API. Each is built from its config section and implements
//! [`crate::provider::Provider`].

pub mod apns;
pub mod email;
pub mod fcm;
pub mod h2;
pub mod oauth;
pub mod sms;
pub mod webhook;
