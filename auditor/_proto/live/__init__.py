"""Generated from proto/ by ``make proto`` (auditor._protogen). Do not edit."""
