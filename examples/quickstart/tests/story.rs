//! The README's first command, as a test: the quickstart's story runs to its checked end, on the
//! embedded broker-lite and, changing only the address, on NATS JetStream (`NATS_URL`) and
//! RabbitMQ (`AMQP_URL`). Each run uses a topic and group of its own and removes them at the end;
//! its check fails unless every committed order was paid exactly once, the outbox and failure
//! table are empty and the poison message is the one dead letter.

fn address(variable: &str, local: &str) -> courier::middleware::BrokerAddress {
    let address = std::env::var(variable).unwrap_or_else(|_| local.to_owned());
    address.parse().expect("a broker address")
}

#[tokio::test]
async fn quickstart_runs_its_story_to_the_expected_end() {
    courier_quickstart::run()
        .await
        .expect("the quickstart's story");
}

#[tokio::test]
async fn the_same_story_runs_on_nats_by_changing_only_the_address() {
    let nats = address("NATS_URL", "nats://127.0.0.1:4222");
    courier_quickstart::run_with(Some(nats))
        .await
        .expect("the quickstart's story on NATS");
}

#[tokio::test]
async fn the_same_story_runs_on_rabbitmq_by_changing_only_the_address() {
    let rabbitmq = address("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    courier_quickstart::run_with(Some(rabbitmq))
        .await
        .expect("the quickstart's story on RabbitMQ");
}
