//! `cargo run -p courier-quickstart`: the story of [`courier_quickstart::run`], exit 0 when it
//! ends as expected, 1 with what went wrong otherwise.

#[tokio::main]
async fn main() {
    if let Err(error) = courier_quickstart::run().await {
        eprintln!("\nquickstart failed: {error:#}");
        std::process::exit(1);
    }
}
