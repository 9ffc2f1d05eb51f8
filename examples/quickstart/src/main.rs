//! `cargo run -p courier-quickstart [-- --broker ADDRESS]`: the story of
//! [`courier_quickstart::run_with`], exit 0 when it ends as expected, 1 with what went wrong
//! otherwise, 2 for a bad command line.
//!
//! Without `--broker` (or `COURIER_BROKER`) it runs an embedded broker-lite; with
//! `--broker nats://127.0.0.1:4222`, `--broker amqp://guest:guest@127.0.0.1:5672/%2f` or a
//! broker-lite `--broker 127.0.0.1:9876` the same story runs against that broker.

use courier::middleware::BrokerAddress;

const USAGE: &str = "usage: quickstart [--broker nats://host:port | amqp://user:password@host:port/vhost | host:port]\n\
    (or COURIER_BROKER=...); without it the story runs on an embedded broker-lite";

#[tokio::main]
async fn main() {
    let broker = match broker_argument(std::env::args().skip(1)) {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("quickstart: {error}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = courier_quickstart::run_with(broker).await {
        eprintln!("\nquickstart failed: {error:#}");
        std::process::exit(1);
    }
}

/// The broker of `--broker ADDRESS` / `--broker=ADDRESS`, else of `COURIER_BROKER`, else none.
fn broker_argument(
    mut args: impl Iterator<Item = String>,
) -> Result<Option<BrokerAddress>, String> {
    let mut address = std::env::var("COURIER_BROKER")
        .ok()
        .filter(|a| !a.is_empty());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--broker" => address = Some(args.next().ok_or("--broker needs an address")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => match other.strip_prefix("--broker=") {
                Some(value) => address = Some(value.to_owned()),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    address
        .map(|a| {
            a.parse()
                .map_err(|e: courier::middleware::BrokerAddressError| e.to_string())
        })
        .transpose()
}
