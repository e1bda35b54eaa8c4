pub mod admin;
pub mod collector;
pub mod insights;
pub mod ops;
pub mod serving;
