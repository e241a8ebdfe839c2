//! The per-shard state slot: each layer installs its shard's state once, typed, and reaches
//! it from any task on that shard. One slot for all layers (the engine's shard, the broker's
//! context, later the MQTT sessions), keyed by type, so no layer keeps a thread-local of its
//! own and none can see another's state by mistake.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static SLOT: RefCell<HashMap<TypeId, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

/// Makes `state` this shard's `T`, replacing any earlier one.
pub fn install<T: 'static>(state: Rc<T>) {
    SLOT.with(|slot| slot.borrow_mut().insert(TypeId::of::<T>(), state));
}

/// This shard's `T`, if one is installed (none on a thread that is not a shard).
pub fn local<T: 'static>() -> Option<Rc<T>> {
    SLOT.with(|slot| {
        let state = slot.borrow().get(&TypeId::of::<T>())?.clone();
        Some(
            state
                .downcast::<T>()
                .expect("the slot holds a T under T's id"),
        )
    })
}

/// Takes this shard's `T` out of the slot.
pub fn remove<T: 'static>() -> Option<Rc<T>> {
    SLOT.with(|slot| {
        let state = slot.borrow_mut().remove(&TypeId::of::<T>())?;
        Some(
            state
                .downcast::<T>()
                .expect("the slot holds a T under T's id"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_has_its_own_state() {
        assert!(local::<String>().is_none());
        install(Rc::new(String::from("shard")));
        install(Rc::new(7u32));
        assert_eq!(
            local::<String>().as_deref().map(String::as_str),
            Some("shard")
        );
        assert_eq!(local::<u32>().as_deref(), Some(&7));
        install(Rc::new(8u32));
        assert_eq!(remove::<u32>().as_deref(), Some(&8));
        assert!(local::<u32>().is_none());
        let other = std::thread::spawn(|| local::<String>().is_none())
            .join()
            .unwrap();
        assert!(other, "another thread has a slot of its own");
    }
}
