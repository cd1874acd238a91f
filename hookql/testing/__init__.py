"""`hookql test`: test cases for scripts and libraries, run here or in a VM."""
