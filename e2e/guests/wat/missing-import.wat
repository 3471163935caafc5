;; Imports a function no host provides: instantiation must fail with a clear
;; "unknown import" style error naming env::does_not_exist.
(module
  (import "env" "does_not_exist" (func $does_not_exist))
  (memory (export "memory") 1)
  (func (export "_start")
    call $does_not_exist))
