//! `coremq-operator run`: reconciles every `CoremqCluster`; `coremq-operator crd`: prints the
//! CustomResourceDefinition (YAML), as the Helm chart carries it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kube::{CustomResourceExt, Resource};

use coremq_operator::crd::CoremqCluster;
use coremq_operator::render;

#[derive(Parser)]
#[command(about = "coremq's Kubernetes operator")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile every CoremqCluster of the Kubernetes cluster (in-cluster config, or the
    /// kubeconfig), until SIGTERM.
    Run,
    /// Print the CoremqCluster CustomResourceDefinition as YAML.
    Crd,
    /// Write the brokers' seccomp profile (`deploy/seccomp/coremq.json`) into DIR as
    /// `coremq.json`, then wait for SIGTERM: the Helm chart's DaemonSet runs this with the
    /// node's `/var/lib/kubelet/seccomp/coremq` mounted at DIR.
    SeccompInstall { dir: PathBuf },
    /// Print the objects a CoremqCluster (a YAML file) becomes, as YAML documents, without
    /// applying them: to review a change, or to validate the manifests.
    Render {
        file: PathBuf,
        /// The resource's uid, for the objects' owner references (a stored resource has
        /// one; a file does not).
        #[arg(long, default_value = "00000000-0000-0000-0000-000000000000")]
        uid: String,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Args::parse().command {
        Command::Run => {
            let runtime = tokio::runtime::Runtime::new()
                .unwrap_or_else(|error| fail(&format!("cannot start the runtime: {error}")));
            runtime.block_on(async {
                let client = kube::Client::try_default().await.unwrap_or_else(|error| {
                    fail(&format!("no Kubernetes API to talk to: {error}"))
                });
                log::info!(
                    "coremq-operator {} reconciling CoremqClusters",
                    env!("CARGO_PKG_VERSION")
                );
                let brokers = std::sync::Arc::new(coremq_operator::brokers::AdminHttp::default());
                let context = coremq_operator::reconcile::Context::new(client, brokers);
                coremq_operator::reconcile::run(context).await;
            });
        }
        Command::SeccompInstall { dir } => {
            let path = dir.join("coremq.json");
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, coremq_operator::SECCOMP_PROFILE));
            if let Err(error) = written {
                fail(&format!("cannot write {}: {error}", path.display()));
            }
            log::info!("wrote the seccomp profile to {}", path.display());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|error| fail(&format!("cannot start the runtime: {error}")));
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .unwrap_or_else(|error| fail(&format!("no SIGTERM handler: {error}")));
                term.recv().await;
            });
        }
        Command::Crd => {
            let yaml =
                serde_yaml_ng::to_string(&CoremqCluster::crd()).expect("a CRD serializes to YAML");
            print!("{yaml}");
        }
        Command::Render { file, uid } => {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|error| fail(&format!("cannot read {}: {error}", file.display())));
            let mut cluster: CoremqCluster = serde_yaml_ng::from_str(&text)
                .unwrap_or_else(|error| fail(&format!("{}: {error}", file.display())));
            if let Err(refusal) = coremq_operator::checks::check_spec(&cluster.spec) {
                fail(&format!("{}: refused: {refusal}", file.display()));
            }
            cluster.meta_mut().uid.get_or_insert(uid);
            let children = render::render(&cluster);
            let mut documents = vec![yaml(&children.config_map), yaml(&children.headless)];
            documents.extend(children.clients.iter().map(yaml));
            documents.push(yaml(&children.stateful_set));
            documents.push(yaml(&children.disruption_budget));
            documents.extend(children.service_monitor.iter().map(yaml));
            print!("{}", documents.join("---\n"));
        }
    }
}

fn yaml<T: serde::Serialize>(object: &T) -> String {
    serde_yaml_ng::to_string(object).expect("a Kubernetes object serializes to YAML")
}

fn fail(message: &str) -> ! {
    eprintln!("coremq-operator: {message}");
    std::process::exit(1)
}
