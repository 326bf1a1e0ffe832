//! The engines policies run on, apart from the host's own, and the clock
//! that ticks their epochs for the deadlines.

use super::*;

/// How often the deadline clock ticks.
const TICK: Duration = Duration::from_millis(2);

/// The engine policies compiled by `compiler` run on: their own, apart from
/// whatever engine the host compiles user modules with, with epoch
/// interruption for deadlines. `None` for quick code where wasmtime has no
/// baseline compiler for this machine.
pub(super) fn engine(compiler: PolicyCode) -> Option<&'static Engine> {
    static OPTIMIZED: OnceLock<Option<Engine>> = OnceLock::new();
    static QUICK: OnceLock<Option<Engine>> = OnceLock::new();
    let (cell, strategy) = match compiler {
        PolicyCode::Optimized => (&OPTIMIZED, wasmtime::Strategy::Cranelift),
        PolicyCode::Quick => (&QUICK, wasmtime::Strategy::Winch),
    };
    cell.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        // Compiling on all cores needs the global thread pool, which panics
        // when the system refuses its threads: then compile on this one.
        config.parallel_compilation(crate::input::all_cores());
        config.strategy(strategy);
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) if compiler == PolicyCode::Quick => {
                tracing::debug!("no quick compiler for policies here ({e:#}): the optimizing one compiles them all");
                return None;
            }
            Err(e) => {
                tracing::error!("no engine for policies ({e:#}): the cache stores nothing");
                return None;
            }
        };
        let ticker = engine.weak();
        let clock = std::thread::Builder::new().name("capcache-policy-clock".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        });
        // Without its clock no deadline holds: no policy runs on this engine.
        if let Err(e) = clock {
            tracing::error!("cannot start the policy deadline thread ({e}): no policy runs in this process");
            return None;
        }
        Some(engine)
    })
    .as_ref()
}

/// The engine for `compiler`'s code, or the optimizing one where there is no
/// such compiler here; an error where there is no engine at all.
pub(super) fn engine_for(compiler: PolicyCode, policy: &str) -> Result<&'static Engine, Error> {
    engine(compiler).or_else(|| engine(PolicyCode::Optimized)).ok_or_else(|| Error::PolicyFault {
        policy: policy.to_string(),
        reason: "no engine to run it on (the policy engine or its deadline thread could not start; see the log)".into(),
    })
}

pub(super) fn ticks(deadline: Duration) -> u64 {
    (deadline.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1
}
