//! `meshd analyze`: finds mistakes in a folder of Istio YAML before it is run,
//! with `istioctl analyze`'s codes, levels and message texts.

pub mod lines;
pub mod schema;
