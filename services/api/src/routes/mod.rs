pub mod admin;
pub mod collector;
pub mod ops;
pub mod serving;
