//! Backend health signals recorded by the data path and read by the controller.

pub mod completions;
pub mod scrape;
pub mod window;

pub use completions::Completions;
pub use window::{Cache, Window};
