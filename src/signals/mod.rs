//! Backend health signals recorded by the data path and read by the controller.

pub mod scrape;
pub mod window;

pub use window::{Cache, Window};
